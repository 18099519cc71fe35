"""Pseudo-labels: the leak trap (a student takes pseudo-labels only from teacher runs that held out
its own validation images), the threshold, the loss weight, and the teacher in the fingerprint."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_CONVNEXT
from typer.testing import CliRunner

from ledger.runs import artifacts
from ledger.runs.artifacts import Predictions
from ledger.data.splits import fold_indices
from ledger.errors import LedgerError, SpecError
from ledger.training.loss import Criterion
from ledger.runs.plan import SplitPlan
from ledger.runs.pseudo_labels import PseudoPlan, TeacherRun, pseudo_labels, pseudo_plan, training_set
from ledger.spec.pseudo_section import PseudoSpec

VOCAB = ("a", "b", "c")


def competition(n_train=12, n_test=4):
    labels = np.arange(n_train) % 3
    return SimpleNamespace(train_ids=tuple(f"t{i}" for i in range(n_train)), train_labels=labels, vocab=VOCAB,
                           test_ids=tuple(f"x{i}" for i in range(n_test)))


def teacher_folder(tmp_path, name, held_out_ids, test_probs):
    folder = tmp_path / name
    folder.mkdir()
    artifacts.save_predictions(folder / artifacts.VALID_PREDS, Predictions(
        ids=np.array(held_out_ids), probs=np.full((len(held_out_ids), 3), 1 / 3), vocab=np.array(VOCAB)))
    artifacts.save_predictions(folder / artifacts.TEST_PREDS, Predictions(
        ids=np.array([f"x{i}" for i in range(len(test_probs))]), probs=np.array(test_probs), vocab=np.array(VOCAB)))
    return folder


def test_a_student_takes_pseudo_labels_only_from_teachers_that_held_out_its_fold(tmp_path):
    # The leak: teacher B trained on fold 0's labels. Its test predictions encode them (here: the test
    # images are fold 0's validation images again, which B predicts with the labels it learned).
    # A student validated on fold 0 must never see B's pseudo-labels, only A's (which held fold 0 out).
    comp = competition()
    fold0 = fold_indices(comp.train_labels, 2, 0, seed=0)[1]
    fold1 = fold_indices(comp.train_labels, 2, 1, seed=0)[1]
    remembered = np.eye(3)[comp.train_labels[fold0[:4]]]  # B's confident, label-encoding predictions
    unsure = np.full((4, 3), 1 / 3)
    unsure[:, 2] += 0.6 - 1 / 3  # A: class c at 0.6 for every test image
    unsure[:, :2] = 0.2
    a = TeacherRun("A", teacher_folder(tmp_path, "A", np.array(comp.train_ids)[fold0], unsure), 2, 0, 0)
    b = TeacherRun("B", teacher_folder(tmp_path, "B", np.array(comp.train_ids)[fold1], remembered), 2, 1, 0)
    other_seed = TeacherRun("C", b.folder, 2, 0, 1)  # fold 0 of another assignment: other images
    pseudo = PseudoSpec(teacher=tmp_path / "teacher.yaml", threshold=0.5)

    plan = pseudo_plan(pseudo, SplitPlan(seed=0, fold=0, folds=2), [b, a, other_seed])
    assert [t.run_id for t in plan.teachers] == ["A"]
    chosen, labels = pseudo_labels(plan, comp, fold0)
    assert list(chosen) == [0, 1, 2, 3] and list(labels) == [2, 2, 2, 2]  # A's labels, not fold 0's truth
    # A teacher run that trained on the student's validation images is refused even if handed over.
    with pytest.raises(LedgerError, match="run B trained on 6 of this run's validation images"):
        pseudo_labels(PseudoPlan((a, b), 0.5, 1.0), comp, fold0)
    # No teacher held out the student's fold: the plan fails, naming the split.
    with pytest.raises(LedgerError, match="no done teacher run held out fold 1/2 seed 3"):
        pseudo_plan(pseudo, SplitPlan(seed=3, fold=0, folds=2), [a, b])


def test_the_threshold_is_reached_within_a_tolerance_and_teachers_are_averaged(tmp_path):
    comp = competition()
    held = list(comp.train_ids)
    # Two teachers: the bag's top probabilities are 0.95, 0.9 (exactly the threshold), 0.89, 0.5.
    first = [[0.95, 0.05, 0.0], [0.0, 0.9, 0.1], [0.89, 0.11, 0.0], [0.5, 0.5, 0.0]]
    second = [[0.95, 0.05, 0.0], [0.1, 0.9 - 1e-8, 0.0 + 1e-8 + 0.1], [0.89, 0.0, 0.11], [0.0, 0.5, 0.5]]
    teachers = (TeacherRun("1", teacher_folder(tmp_path, "1", held, first), 2, 0, 0),
                TeacherRun("2", teacher_folder(tmp_path, "2", held, second), 2, 0, 0))
    chosen, labels = pseudo_labels(PseudoPlan(teachers, 0.9, 1.0), comp, np.arange(6))
    assert list(chosen) == [0, 1] and list(labels) == [0, 1]


def test_the_pseudo_weight_weighs_each_images_cross_entropy():
    images, test_images = np.zeros((4, 3, 2, 2), np.uint8), np.full((3, 3, 2, 2), 7, np.uint8)
    joined, soft, rows = training_set(images, np.array([0, 1, 2, 0]), np.array([1, 3]), test_images,
                                      np.array([2]), np.array([1]), weight=0.5, classes=3, smoothing=0.1)
    assert list(rows) == [1, 3, 4] and joined[np.array([4])][0, 0, 0, 0] == 7 and joined[np.array([3])].max() == 0
    # Smoothed one-hot: 0.9 + 0.1 / 3 on the label, 0.1 / 3 elsewhere; the pseudo row halved.
    assert soft[3] == pytest.approx([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    assert soft[4] == pytest.approx([0.5 * 0.1 / 3, 0.5 * (0.9 + 0.1 / 3), 0.5 * 0.1 / 3])
    # The loss: mean over the batch of (weight x smoothed cross-entropy). Logits (2, 1, 0):
    # -log p = (0.40761, 1.40761, 2.40761); smoothed CE for label 0 = 0.9 * 0.40761 + 0.1 * 1.40761 = 0.50761,
    # for label 1 = 0.9 * 1.40761 + 0.1 * 1.40761 = 1.40761; batch of two: (0.50761 + 0.5 * 1.40761) / 2.
    logits = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    loss = Criterion(3, label_smoothing=0.1)(logits, torch.from_numpy(soft[[3, 4]]))
    assert loss.item() == pytest.approx((0.50761 + 0.5 * 1.40761) / 2, abs=1e-4)
    # Weight 1 keeps the class indices (so mixup and the plain loss work as without pseudo-labels).
    _, hard, _ = training_set(images, np.array([0, 1, 2, 0]), np.array([1]), test_images, np.array([0, 2]),
                              np.array([2, 1]), weight=1.0, classes=3)
    assert hard.dtype == np.int64 and list(hard) == [0, 1, 2, 0, 2, 1]


# ---------------------------------------------------------------- spec, fingerprint, end to end


def write(path, root, split="{folds: 3, seed: 0}", pseudo="", epochs=1):
    models = (f"  - {{name: c, arch: convnext_atto, size: 32, runs: 1, augment: false,"
              f" model_kwargs: {json.dumps(TINY_CONVNEXT)}}}\n")
    path.write_text(f"name: {path.stem}\ndata: {{root: {root}, labels: train.csv}}\nsplit: {split}\n"
                    f"train: {{batch_size: 8, epochs: {epochs}, lr: 0.002}}\ntta: {{n: 0}}\n{pseudo}models:\n{models}")
    return path


def test_the_teacher_must_split_as_the_student_and_is_in_the_fingerprint(tmp_path, tiny_competition):
    from ledger.spec.fingerprint import run_fingerprint
    from ledger.spec.loader import load_spec

    write(tmp_path / "teacher.yaml", tiny_competition, split="{folds: 2, seed: 0}")
    student = write(tmp_path / "student.yaml", tiny_competition, pseudo="pseudo: {teacher: teacher.yaml}\n")
    with pytest.raises(SpecError, match=r"student.yaml: pseudo.teacher: .*teacher.yaml splits as"):
        load_spec(student, check_models=False)
    write(tmp_path / "teacher.yaml", tiny_competition)
    spec = load_spec(student, check_models=False)
    assert spec.pseudo.teacher == tmp_path / "teacher.yaml" and spec.pseudo.threshold == 0.9
    before = run_fingerprint(spec, spec.models[0])
    write(tmp_path / "teacher.yaml", tiny_competition, epochs=2)  # a changed teacher...
    assert run_fingerprint(load_spec(student, check_models=False), spec.models[0]) != before  # ...retrains students
    write(tmp_path / "mixing.yaml", tiny_competition, pseudo="pseudo: {teacher: teacher.yaml, weight: 0.5}\n")
    with pytest.raises(SpecError, match=r"pseudo.weight: a weight other than 1 cannot be used with mixing"):
        load_spec(tmp_path / "mixing.yaml", check_models=False, overrides=["train.mixup=0.4"])
    write(tmp_path / "random.yaml", tiny_competition, split="{valid_pct: 0.2}",
          pseudo="pseudo: {teacher: teacher.yaml}\n")
    with pytest.raises(SpecError, match="pseudo.teacher: needs a fixed split"):
        load_spec(tmp_path / "random.yaml", check_models=False)


@pytest.mark.slow
def test_a_student_trains_on_its_folds_teacher_run_end_to_end(tmp_path, tiny_competition):
    from ledger.cli import app

    runner, home = CliRunner(), tmp_path / "home"
    teacher = write(tmp_path / "teacher.yaml", tiny_competition)
    student = write(tmp_path / "student.yaml", tiny_competition,
                    pseudo="pseudo: {teacher: teacher.yaml, threshold: 0.0, weight: 0.5}\n")  # soft targets
    result = runner.invoke(app, ["train", str(student), "--home", str(home)])
    assert result.exit_code != 0 and "no done teacher run held out fold 1/3 seed 0" in result.output
    assert runner.invoke(app, ["train", str(teacher), "--home", str(home)]).exit_code == 0
    result = runner.invoke(app, ["train", str(student), "--home", str(home)])
    assert result.exit_code == 0, result.output
    runs = json.loads(runner.invoke(app, ["runs", "--home", str(home), "--json"]).output)["runs"]
    by_experiment = {r["experiment"]: r for r in runs}
    pseudo = yaml.safe_load((home / by_experiment["student"]["artifact_dir"] / artifacts.SPEC).read_text())["pseudo"]
    # Threshold 0: every test image is pseudo-labelled, from the teacher run of the same fold.
    assert pseudo["teacher_runs"] == [by_experiment["teacher"]["id"]] and pseudo["images"] == 12
    assert by_experiment["student"]["fold"] == by_experiment["teacher"]["fold"] == 0
