"""Weight averaging (the learner's callback) and gradient clipping in the one training step (worked
by hand on tiny nets), group-aware folds, test-time resolution, and the settings' place in the fingerprint."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ledger.data.batches import Batches
from ledger.training.device import Runtime, resolve_precision
from ledger.training.loss import Criterion
from ledger.training.callbacks import Callback, WeightAverage
from ledger.training.learner import Learner
from ledger.training.step import StepSettings, loop_parts, train_step

CPU = torch.device("cpu")


class AsFloat:
    """A batch transform that hands the pixels on unchanged, so gradients can be worked by hand."""

    def random(self, images, generator=None):
        return images.float()

    plain = random

    def erase(self, x, generator=None):
        return x


def linear_runtime(scaled: bool = False) -> Runtime:
    precision = resolve_precision("fp32", CPU)
    if scaled:  # fp16's grad scaler, on a CPU: the scaler works the same on float32 gradients
        precision = type(precision)("fp16", None, scaled=True)
    return Runtime(CPU, precision, 1, AsFloat(), torch.Generator().manual_seed(0))


def zero_linear() -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 2, bias=False))
    nn.init.zeros_(net[1].weight)
    return net


def one_image() -> tuple[torch.Tensor, torch.Tensor]:
    # x = (3, 4, 0), target 0. With zero weights the logits are (0, 0) and softmax (0.5, 0.5), so
    # dL/dlogits = p - onehot = (-0.5, 0.5) and dL/dW = outer((-0.5, 0.5), x):
    # [[-1.5, -2, 0], [1.5, 2, 0]], whose norm is sqrt(2 * (2.25 + 4)) = sqrt(12.5) = 3.53553.
    return torch.tensor([[[[3]], [[4]], [[0]]]], dtype=torch.uint8), torch.tensor([0])


def gradients_at_step(net, settings, runtime) -> torch.Tensor:
    """The gradient the optimizer steps with (seen just before its step)."""
    images, targets = one_image()
    parts = loop_parts(net, Batches(images.numpy(), targets.numpy(), np.arange(1), 1), runtime, settings)
    seen = []
    handle = register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: seen.append(
        net[1].weight.grad.detach().clone()))
    try:
        train_step(parts, images, targets, runtime, Criterion(2), settings)
    finally:
        handle.remove()
    return seen[0]


def test_clipping_scales_the_global_gradient_norm_to_the_limit():
    unclipped = gradients_at_step(zero_linear(), StepSettings(weight_decay=0.0), linear_runtime())
    assert unclipped.norm().item() == pytest.approx(12.5 ** 0.5, abs=1e-5)
    clipped = gradients_at_step(zero_linear(), StepSettings(weight_decay=0.0, clip_grad=1.0), linear_runtime())
    assert clipped.norm().item() == pytest.approx(1.0, abs=1e-5)
    # Same direction: every entry divided by 3.53553 (-1.5 / 3.53553 = -0.42426).
    assert clipped[0, 0].item() == pytest.approx(-0.42426, abs=1e-5)
    # A limit above the norm changes nothing.
    loose = gradients_at_step(zero_linear(), StepSettings(weight_decay=0.0, clip_grad=10.0), linear_runtime())
    torch.testing.assert_close(loose, unclipped)


def test_clipping_under_the_grad_scaler_sees_the_unscaled_gradients():
    # fp16's scaler multiplies the loss by 65536; clipping the scaled gradients to 1 would leave
    # 1 / 65536 after the scaler unscales them. The optimizer must step with norm 1.
    runtime = linear_runtime(scaled=True)
    assert loop_parts(zero_linear(), None, runtime, StepSettings()).scaler.get_scale() == 65536.0
    clipped = gradients_at_step(zero_linear(), StepSettings(weight_decay=0.0, clip_grad=1.0), runtime)
    assert clipped.norm().item() == pytest.approx(1.0, abs=1e-5)
    # Without clipping the fused AdamW gets the scaled gradients and unscales them in its kernel:
    # 3.53553 * 65536 = 231704.7, so the scaler really is at work in this test.
    unclipped = gradients_at_step(zero_linear(), StepSettings(weight_decay=0.0), runtime)
    assert unclipped.norm().item() == pytest.approx(3.53553 * 65536, rel=1e-5)


def test_weight_average_follows_timms_warm_up_worked_by_hand():
    # timm's ModelEmaV3 with use_warmup, after optimizer step t: decay = min(ema, 1 - t^(-2/3)),
    # average = decay * average + (1 - decay) * weights.
    #   t = 1: 0 (the average is a copy of the weights)
    #   t = 2: 1 - 2^(-2/3) = 1 - 0.629961 = 0.370039
    #   t = 3: 1 - 3^(-2/3) = 1 - 0.480750 = 0.519250
    #   t = 4: 1 - 4^(-2/3) = 1 - 0.396850 = 0.603150, capped at ema 0.6 -> 0.6
    decays = [0.0, 0.370039, 0.519250, 0.6]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 2))
    images, targets = one_image()
    runtime, settings = linear_runtime(), StepSettings(weight_decay=0.0, ema=0.6)
    seen = []

    class Record(Callback):  # after the average, which the learner puts first
        def after_step(self, learner):
            seen.append(({k: v.detach().clone() for k, v in net.state_dict().items()},
                         {k: v.detach().clone() for k, v in learner.inference_net.state_dict().items()}))

    learner = Learner(net, Batches(images.numpy(), targets.numpy(), np.arange(1), 1), runtime, Criterion(2),
                      settings, callbacks=[Record()])
    assert isinstance(learner.callbacks[0], WeightAverage)
    for group in learner.parts.optimizer.param_groups:
        group["lr"] = 0.1
    fitted = learner.fit_epochs(len(decays))  # one image: one step an epoch
    expected = None
    for decay, (weights, averaged) in zip(decays, seen, strict=True):
        expected = weights if expected is None else {k: decay * expected[k] + (1 - decay) * weights[k] for k in weights}
        for key in weights:
            torch.testing.assert_close(averaged[key], expected[key], atol=1e-6, rtol=1e-6)
    assert learner.parts.steps == 4
    # The average lags the weights: after 4 steps it is not the net itself, and the fit hands it back.
    assert fitted.net is learner.average.module
    assert not torch.allclose(fitted.net[1].weight, net[1].weight)


# ---------------------------------------------------------------- group-aware folds


def test_group_folds_keep_every_group_inside_one_fold():
    from ledger.data.splits import fold_indices

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 4)  # 30 sources of 4 images each
    labels = rng.integers(0, 3, len(groups))
    seen = np.zeros(len(groups), dtype=int)
    for fold in range(5):
        train, valid = fold_indices(labels, 5, fold, seed=3, groups=groups)
        assert not set(groups[train]) & set(groups[valid])  # no source on both sides
        assert len(train) + len(valid) == len(groups)
        seen[valid] += 1
    assert (seen == 1).all()  # every image held out exactly once over the folds
    # The same seed gives the same folds (every run of a spec must agree on them).
    assert np.array_equal(fold_indices(labels, 5, 2, 3, groups)[1], fold_indices(labels, 5, 2, 3, groups)[1])


def test_group_folds_need_as_many_groups_as_folds():
    from ledger.data.splits import fold_indices
    from ledger.errors import LedgerError

    with pytest.raises(LedgerError, match="4 group"):
        fold_indices(np.zeros(8, dtype=int), 5, 0, 0, groups=np.repeat(np.arange(4), 2))


def _spec_text(root, split):
    return (f"name: g\ndata: {{root: {root}, labels: train.csv}}\nsplit: {split}\n"
            "models:\n  - {name: c, arch: convnext_atto, size: 32}\n")


def test_a_group_column_that_does_not_exist_is_refused_naming_key_and_file(tmp_path, tiny_competition):
    from ledger.errors import SpecError
    from ledger.spec.loader import load_spec

    path = tmp_path / "g.yaml"
    path.write_text(_spec_text(tiny_competition, "{folds: 3, group: source}"))
    with pytest.raises(SpecError) as error:
        load_spec(path, check_models=False)
    message = str(error.value)
    assert "split.group" in message and "train.csv" in message and "'source'" in message and "\n" not in message
    path.write_text(_spec_text(tiny_competition, "{valid_pct: 0.2, group: group}"))
    with pytest.raises(SpecError, match="split.group: needs split.folds"):
        load_spec(path, check_models=False)
    path.write_text(_spec_text(tiny_competition, "{folds: 3, group: group}"))
    assert load_spec(path, check_models=False).split.group == "group"


def test_group_folds_reach_the_runs_and_their_fingerprint(tmp_path, tiny_competition):
    from ledger.data.competition import load_competition
    from ledger.spec.fingerprint import run_fingerprint
    from ledger.runs.plan import plan
    from ledger.spec.loader import load_spec
    from ledger.runs.training_run import split_of

    path = tmp_path / "g.yaml"
    path.write_text(_spec_text(tiny_competition, "{folds: 3, seed: 0}"))
    plain = load_spec(path, check_models=False)
    path.write_text(_spec_text(tiny_competition, "{folds: 3, seed: 0, group: group}"))
    grouped = load_spec(path, check_models=False)
    assert run_fingerprint(plain, plain.models[0]) != run_fingerprint(grouped, grouped.models[0])
    competition = load_competition(grouped.data)
    groups = competition.train_column("group")
    ids = iter(range(100))
    plans = plan(grouped, grouped.models, [], lambda m: 1, lambda: f"run{next(ids)}")
    assert [p.split.group for p in plans] == ["group"] * 3
    for run in plans:
        train, valid = split_of(run, competition)
        assert not set(groups[train]) & set(groups[valid])


def test_settings_at_their_off_value_leave_old_fingerprints_alone(tmp_path, tiny_competition):
    # Runs on record from before clip_grad, ema, augment.erasing, split.group and tta.size existed
    # must keep their fingerprints: the hash of a spec that does not use them has none of their keys.
    from ledger.spec.fingerprint import fingerprint_fields
    from ledger.spec.loader import load_spec

    path = tmp_path / "g.yaml"
    path.write_text(_spec_text(tiny_competition, "{folds: 3, seed: 0}"))
    spec = load_spec(path, check_models=False)
    fields = fingerprint_fields(spec, spec.models[0])
    assert not {"clip_grad", "ema"} & set(fields)
    assert "group" not in fields["split"] and "size" not in fields["tta"]
    assert "erasing" not in fields["augment"]
    changed = load_spec(path, check_models=False,
                        overrides=["train.ema=0.99", "tta.size=1.25", "augment.erasing=0.5"])
    changed_fields = fingerprint_fields(changed, changed.models[0])
    assert changed_fields["ema"] == 0.99 and changed_fields["tta"]["size"] == [1.25]
    assert changed_fields["augment"]["erasing"] == 0.5


# ---------------------------------------------------------------- test-time resolution


def test_tta_size_parses_pixels_factors_and_lists(tmp_path, tiny_competition):
    from ledger.errors import SpecError
    from ledger.spec.loader import load_spec

    path = tmp_path / "t.yaml"
    path.write_text(_spec_text(tiny_competition, "{folds: 3}"))

    def sizes(value):
        return load_spec(path, check_models=False, overrides=[f"tta.size={value}"]).tta.sizes_for((32, 24))

    assert sizes(40) == ((40, 40),)
    assert sizes(1.25) == ((40, 30),)  # a factor of the entry's own (height, width)
    assert sizes("[1.0, 48, [40, 36]]") == ((32, 24), (48, 48), (40, 36))
    assert load_spec(path, check_models=False).tta.sizes_for((32, 24)) == ((32, 24),)  # off: the entry's size
    for bad, says in (("1", "write a factor"), ("[]", "non-empty"), ("-2.0", "factor in"), ("abc", "expected pixels")):
        with pytest.raises(SpecError, match=f"tta.size: .*{says}"):
            sizes(bad)


def test_tta_at_sizes_is_the_mean_of_each_sizes_prediction():
    import timm

    from ledger.data.augment import BatchTransform
    from ledger.spec.objects import RunTta
    from ledger.training.inference import predict, tta_at_sizes

    torch.manual_seed(0)
    net = timm.create_model("convnext_atto", num_classes=3, dims=[8, 16, 32, 64], depths=[1, 1, 1, 1])
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 24, 24), dtype=np.uint8)
    batches = Batches(images, None, np.arange(5), 2)
    transform = BatchTransform((32, 32), (0.5,) * 3, (0.25,) * 3, augment=None)
    runtime = Runtime(CPU, resolve_precision("fp32", CPU), 1, transform, torch.Generator().manual_seed(0))
    at = lambda size: predict(net, batches, Runtime(CPU, runtime.precision, 1, BatchTransform(  # noqa: E731
        size, (0.5,) * 3, (0.25,) * 3, augment=None), runtime.generator))[0]
    both = tta_at_sizes(net, batches, runtime, RunTta(n=0, sizes=((32, 32), (48, 48))))
    torch.testing.assert_close(both, (at((32, 32)) + at((48, 48))) / 2)
    assert not torch.allclose(at((32, 32)), at((48, 48)))  # the size really changes the prediction
    torch.testing.assert_close(tta_at_sizes(net, batches, runtime, RunTta(n=0)), at((32, 32)))


def _one_run(tmp_path, tiny_competition, models, tta="{n: 0, beta: 0.25, size: [1.0, 1.5]}", extra=""):
    from ledger.data.competition import load_competition
    from ledger.runs.plan import plan
    from ledger.spec.loader import load_spec

    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\ndata: {{root: {tiny_competition}, labels: train.csv}}\nsplit: {{folds: 3}}\n"
                    f"train: {{batch_size: 8, epochs: 2, lr: 0.002}}\ntta: {tta}\n{extra}models:\n{models}")
    spec = load_spec(path, check_models=False)
    [run] = plan(spec, spec.models[:1], [], lambda m: 1, lambda: "run0", more=1 - spec.models[0].runs)
    return spec, run, load_competition(spec.data)


def test_a_run_predicts_with_the_average_at_every_tta_size_and_saves_the_average(tmp_path, tiny_competition,
                                                                               monkeypatch):
    from safetensors.torch import load_file

    from ledger.runs import artifacts

    from ledger.runs import training_run
    from ledger.training.checkpoint import Checkpoint
    from ledger.runs.execution import cached_images
    from ledger.training.callbacks import SilentProgress
    from ledger.training.inference import predict

    models = ("  - {name: c, arch: convnext_atto, size: 32, runs: 1, ema: 0.9, save_weights: true,"
              " model_kwargs: {dims: [8, 16, 32, 64], depths: [1, 1, 1, 1]}}\n")
    spec, run, competition = _one_run(tmp_path, tiny_competition, models)
    assert run.tta.sizes == ((32, 32), (48, 48))
    trained_nets = []

    class Recorded(training_run.Learner):
        def __init__(self, net, *args, **kwargs):
            trained_nets.append(net)
            super().__init__(net, *args, **kwargs)

    monkeypatch.setattr(training_run, "Learner", Recorded)
    images = cached_images(competition, run.model, tmp_path / "cache")
    trained = training_run.train_run(run, competition, images, CPU, SilentProgress(), Checkpoint(tmp_path / "ck"))
    [raw] = trained_nets
    average = trained.fitted.net
    assert average is not raw

    def at_sizes(net, rows):
        batches = Batches(rows, None, np.arange(len(rows)), 4)
        return sum(predict(net, batches, replace(trained.runtime, transform=trained.runtime.transform.resized(s)))[0]
                   for s in run.tta.sizes) / 2

    # Test and held-out images alike: the average's predictions, at both sizes (n: 0, so no randomness).
    torch.testing.assert_close(trained.test_probs, at_sizes(average, images.test))
    torch.testing.assert_close(trained.valid_probs, at_sizes(average, images.train[trained.valid_idx]))
    assert not torch.allclose(trained.test_probs, at_sizes(raw, images.test))
    folder = tmp_path / "folder"
    folder.mkdir()
    training_run.write_run_folder(folder, run, competition, trained)
    saved = load_file(str(folder / artifacts.WEIGHTS))
    for name, value in average.state_dict().items():
        assert torch.equal(saved[name], value), name
    # Validation after each epoch scored the average too: its last loss is the average's, untransformed.
    valid = Batches(images.train, competition.train_labels, trained.valid_idx, 4)
    probs, labels = predict(average, valid, trained.runtime)
    loss = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    assert trained.fitted.history[-1].valid_loss == pytest.approx(loss, abs=1e-5)


def test_an_architecture_of_one_input_size_is_refused_before_training(tmp_path, tiny_competition):
    from ledger.training.checkpoint import Checkpoint
    from ledger.errors import LedgerError
    from ledger.runs.execution import cached_images
    from ledger.training.callbacks import SilentProgress
    from ledger.runs.training_run import train_run

    models = ("  - {name: v, arch: vit_tiny_patch16_224, size: 16, runs: 1,"
              " model_kwargs: {img_size: 16, patch_size: 4, depth: 1, embed_dim: 32, num_heads: 2}}\n")
    _, run, competition = _one_run(tmp_path, tiny_competition, models, tta="{size: 24}")

    class NoTraining(SilentProgress):
        def start(self, *args):
            raise AssertionError("trained before the size check")

    with pytest.raises(LedgerError, match="tta.size 24x24: this architecture cannot predict at that size"):
        train_run(run, competition, cached_images(competition, run.model, None), CPU, NoTraining(),
                  Checkpoint(tmp_path / "ck"))


def test_ledger_predict_repeats_a_runs_test_time_sizes(tmp_path, tiny_competition):
    # `ledger predict` rebuilds a run from its spec.yaml: it must predict at the run's tta.size too,
    # giving back the probabilities the run wrote for the test images (n 0: no random passes).
    import json

    from conftest import write_spec
    from typer.testing import CliRunner

    from ledger.runs import artifacts
    from ledger.cli import app

    models = ("  - {name: c, arch: convnext_atto, size: 32, runs: 1, accum: 1, save_weights: true,"
              " model_kwargs: {dims: [8, 16, 32, 64], depths: [1, 1, 1, 1]}}\n")
    spec, home, runner = write_spec(tmp_path / "tiny.yaml", tiny_competition, models), tmp_path / "home", CliRunner()
    result = runner.invoke(app, ["train", str(spec), "--home", str(home), "--set", "tta.n=0",
                                 "--set", "tta.size=[1.0, 1.5]"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(runner.invoke(app, ["runs", "--home", str(home), "--json"]).stdout)["runs"]
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", row["id"], str(tiny_competition / "test_images"), "--out", str(out),
                                 "--home", str(home)])
    assert result.exit_code == 0, result.output
    written = artifacts.load_predictions(home / row["artifact_dir"] / artifacts.TEST_PREDS)
    frame = pd.read_csv(out, dtype={"id": str}).set_index("id")
    stems = set(written.ids)
    frame.index = [name.rsplit(".", 1)[0] if name.rsplit(".", 1)[0] in stems else name for name in frame.index]
    got = frame.loc[list(written.ids), list(written.vocab)].to_numpy()
    np.testing.assert_allclose(got, written.probs, atol=1e-5)
