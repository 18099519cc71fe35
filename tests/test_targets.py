"""Target cards and what follows from them: the table, precision and kernels by capability, the
allocator cap, the probe key, predicted against measured peaks, and the time estimate. Expected
figures are worked by hand in the comments."""

import json

import pytest
from conftest import TINY_CONVNEXT, ledger_at_version, write_spec
from typer.testing import CliRunner

from ledger.cli import app
from ledger.probe.time_estimate import RunShape, Timings, run_seconds
from ledger.probe.accumulation import Trial
from ledger.probe.setting import ProbeSetting, probe_key
from ledger.spec.loader import ModelSpec
from ledger.store.database import Store
from ledger.probe.targets import TARGETS, check_peak, memory_fraction, parse_budget, precision_for, sdpa_kernels

GiB, MiB = 1024**3, 1024**2
VERSIONS = dict(torch="2.9.0", cudnn=91002, alloc_conf=None)


def test_every_named_card_is_in_the_table_below_its_label():
    labels = {"t4": 16, "p100": 16, "v100-16": 16, "v100-32": 32, "a10g": 24, "l4": 24, "a100-40": 40,
              "a100-80": 80, "h100-80": 80, "rtx3090": 24, "rtx4090": 24}  # GB on the box
    assert set(labels) <= set(TARGETS)
    for name, gigabytes in labels.items():
        total = TARGETS[name].total_memory
        # torch sees less than the label (ECC, the driver's reservations), but not 10% less.
        assert 0.9 * gigabytes * 1000**3 < total < gigabytes * GiB, name


def test_a_card_name_is_its_total_memory_and_capability():
    t4 = parse_budget("t4")
    assert t4.capacity_bytes == 15_828_320_256 and t4.target.capability == (7, 5) and t4.target_name == "t4"
    assert parse_budget("A100_80").target.capability == (8, 0)  # any case, _ for -
    assert parse_budget("p100").target.capability == (6, 0)


def test_a_size_still_works_and_has_no_target():
    budget = parse_budget("16GiB")
    assert (budget.capacity_bytes, budget.target) == (16 * GiB, None)
    assert parse_budget(1000).capacity_bytes == 1000


def test_an_unknown_card_names_the_cards_there_are():
    with pytest.raises(ValueError, match=r"'t5'.*cards: t4, p100"):
        parse_budget("t5")
    with pytest.raises(ValueError, match="not a memory size"):
        parse_budget("16 parsecs")


@pytest.mark.parametrize(("requested", "capability", "expected"), [
    ("auto", (7, 5), "fp16"),  # T4: no native bf16
    ("auto", (6, 0), "fp16"),  # P100
    ("auto", (7, 0), "fp16"),  # V100
    ("auto", (8, 0), "bf16"),  # A100
    ("auto", (8, 9), "bf16"),  # L4, RTX 4090
    ("auto", (9, 0), "bf16"),  # H100
    ("auto", None, "fp32"),  # a CPU
    ("fp32", (9, 0), "fp32"),  # what the spec names is kept
    ("bf16", (7, 5), "bf16"),
])
def test_precision_by_capability(requested, capability, expected):
    assert precision_for(requested, capability) == expected


def test_flash_attention_only_from_ampere():
    assert sdpa_kernels((7, 5)) == {"flash": False, "mem_efficient": True, "math": True}
    assert sdpa_kernels((8, 0))["flash"] and sdpa_kernels((9, 0))["flash"]
    assert sdpa_kernels(None)["flash"]  # no target: nothing turned off


def test_memory_fraction_leaves_the_target_capacity_less_the_context():
    # A 16 GiB target probed on an 80 GiB card with a 1 GiB context: (16 - 1) / 80 = 0.1875.
    assert memory_fraction(16 * GiB, 1 * GiB, 80 * GiB) == pytest.approx(0.1875)
    # The T4 on a 141 GiB card, 512 MiB context: (15,828,320,256 - 536,870,912) / 151,397,597,184.
    assert memory_fraction(15_828_320_256, 512 * MiB, 141 * GiB) == pytest.approx(15_291_449_344 / 151_397_597_184)
    assert memory_fraction(80 * GiB, 1 * GiB, 16 * GiB) == 1.0  # a bigger target is not capped
    with pytest.raises(ValueError, match="leaves nothing"):
        memory_fraction(1 * GiB, 2 * GiB, 80 * GiB)


def test_peak_against_prediction():
    over = check_peak(100 * MiB, 106 * MiB, 0.05)  # 6% over, margin 5%
    assert over.relative == pytest.approx(0.06) and over.exceeds
    assert over.describe() == "6.0% over the probe's prediction, more than the 5% margin"
    at_margin = check_peak(100 * MiB, 105 * MiB, 0.05)  # exactly the margin: not a warning
    assert not at_margin.exceeds
    under = check_peak(100 * MiB, 90 * MiB, 0.05)
    assert under.describe() == "10.0% under the probe's prediction" and not under.exceeds
    assert check_peak(None, 90, 0.05) is None and check_peak(100, None, 0.05) is None


def test_run_time_estimate():
    timings = Timings(step_seconds=0.5, predict_seconds_per_image=0.001, augmented_seconds_per_image=0.002)
    shape = RunShape(train_images=1000, valid_images=250, test_images=500, batch_size=64, epochs=3,
                     frozen_epochs=1, tta_n=4)
    # 15 steps an epoch (1000 // 64), frozen ones as dear as the others: 4 x 15 x 0.5 = 30 s;
    # validation 4 epochs x 250 x 0.001 = 1.0 s; TTA 750 images x (0.001 + 4 x 0.002) = 6.75 s.
    assert run_seconds(timings, shape) == pytest.approx(37.75)


def _setting(budget: str, versions=VERSIONS, capability=None) -> ProbeSetting:
    return ProbeSetting(parse_budget(budget), 0.05, capability, versions)


def test_the_probe_key_holds_target_precision_input_and_versions():
    model = ModelSpec(name="m", arch="convnext_atto", size=(32, 32))
    key = json.loads(probe_key(model, _setting("t4")))
    assert (key["target"], key["precision"], key["presize"], key["resize"]) == ("t4", "fp16", None, "squish")
    assert (key["torch"], key["cudnn"]) == ("2.9.0", 91002)
    assert json.loads(probe_key(model, _setting("a100-80")))["precision"] == "bf16"
    assert json.loads(probe_key(model, _setting("16GiB")))["precision"] == "fp32"  # a size, on a CPU
    assert json.loads(probe_key(model, _setting("16GiB", capability=(9, 0))))["precision"] == "bf16"
    others = [probe_key(model, _setting("v100-16")), probe_key(model, _setting("16GiB")),
              probe_key(ModelSpec(name="m", arch="convnext_atto", size=(32, 32), presize=(40, 40)), _setting("t4")),
              probe_key(ModelSpec(name="m", arch="convnext_atto", size=(32, 32), resize="crop"), _setting("t4")),
              probe_key(model, _setting("t4", dict(VERSIONS, torch="2.8.0"))),
              probe_key(model, _setting("t4", dict(VERSIONS, cudnn=90100))),
              probe_key(model, _setting("t4", dict(VERSIONS, alloc_conf="expandable_segments:True"))),
              # A weight average is one more copy of the weights: its probe is its own.
              probe_key(ModelSpec(name="m", arch="convnext_atto", size=(32, 32), ema=0.999), _setting("t4"))]
    assert len({probe_key(model, _setting("t4")), *others}) == 1 + len(others)
    assert "ema" not in key  # off: the key is what it was before averaging existed


def test_a_probe_of_one_key_never_answers_for_another(tmp_path):
    store = Store(tmp_path / "home")
    model = ModelSpec(name="m", arch="convnext_atto", size=(32, 32))
    t4, v100 = probe_key(model, _setting("t4")), probe_key(model, _setting("v100-16"))
    store.record_probe("x", "m", t4, "32", "cpu: test", 15_828_320_256, 0.05, 2,
                       [Trial(2, 32, 1000, False, 0.1, step_seconds=0.25)], target="t4", precision="fp16")
    assert store.latest_probe(t4, "cpu: test", 15_828_320_256, 0.05).precision == "fp16"
    assert store.latest_probe(v100, "cpu: test", 15_828_320_256, 0.05) is None
    [trial] = store.latest_probe(t4, "cpu: test", 15_828_320_256, 0.05).trials
    assert trial.step_seconds == 0.25 and trial.alloc_retries is None


def test_an_older_ledger_gains_the_prediction_columns_and_keeps_its_rows(tmp_path):
    home = tmp_path / "home"
    db = ledger_at_version(home, 4)
    db.execute("INSERT INTO runs (id, experiment, model, arch, size, status, started_at, peak_bytes)"
               " VALUES ('r1', 'x', 'm', 'a', '32', 'done', 'now', 123)")
    db.close()
    [row] = Store(home).runs()
    assert (row.id, row.peak_bytes, row.predicted_peak_bytes, row.peak_over_prediction) == ("r1", 123, None, None)


@pytest.mark.slow
def test_probe_for_a_t4_then_train_carries_predicted_and_measured_peaks(tmp_path, tiny_competition):
    """The issue's check on a tiny competition: the probe answers for the T4 (fp16, its capacity less
    the margin), the dry run estimates the time, and the trained run's row has both peaks."""
    runner, home = CliRunner(), tmp_path / "home"
    spec = write_spec(tmp_path / "tiny.yaml", tiny_competition,
                      f"  - {{name: convnext, arch: convnext_atto, size: 32, model_kwargs: {json.dumps(TINY_CONVNEXT)}}}\n")
    probed = runner.invoke(app, ["probe-memory", str(spec), "--budget", "t4", "--json", "--home", str(home)])
    assert probed.exit_code == 0, probed.output
    [report] = json.loads(probed.stdout)
    assert (report["target"], report["capacity_bytes"], report["precision"]) == ("t4", 15_828_320_256, "fp16")
    assert report["usable_bytes"] == int(15_828_320_256 * 0.95) and report["chosen_k"] == 1
    assert report["trials"][0]["step_seconds"] > 0
    # The spec's budget is 4GiB: train looks up (and probes for) that one, so point the spec at the t4.
    overrides = ["--set", "probe.budget=t4"]
    dry = runner.invoke(app, ["train", str(spec), "--dry-run", "--home", str(home), *overrides])
    assert dry.exit_code == 0, dry.output
    assert "estimated time on this device:" in dry.output and "fp32" in dry.output  # CPU training runs fp32
    trained = runner.invoke(app, ["train", str(spec), "--home", str(home), *overrides])
    assert trained.exit_code == 0, trained.output
    [row] = json.loads(runner.invoke(app, ["runs", "--json", "--home", str(home)]).stdout)["runs"]
    assert row["predicted_peak_bytes"] == report["trials"][0]["peak_bytes"] and row["peak_bytes"] > 0
    # The row says how far apart they are, in the words check_peak uses for these two figures.
    relative = (row["peak_bytes"] - row["predicted_peak_bytes"]) / row["predicted_peak_bytes"]
    assert row["peak_vs_prediction"].startswith(f"{abs(relative):.1%} {'over' if relative >= 0 else 'under'}")
    assert row["peak_over_prediction"] == int(relative > 0.05)


def test_decoding_is_charged_only_when_the_images_are_not_cached(tmp_path, tiny_competition):
    from ledger.data.competition import load_competition
    from ledger.data.images import load_images
    from ledger.probe.planned_time import decoding_seconds
    from ledger.spec.loader import DataSpec

    competition = load_competition(DataSpec(root=tiny_competition, labels="train.csv"))
    model = ModelSpec(name="m", arch="convnext_atto", size=(24, 24))
    cache = tmp_path / "cache"
    assert decoding_seconds(competition, model, cache) > 0  # nothing cached: a sample is decoded and timed
    for paths in (competition.train_paths, competition.test_paths):
        load_images(tuple(paths), model.item_size, model.resize, cache)
    assert decoding_seconds(competition, model, cache) == 0.0


def test_training_resolves_auto_by_the_cards_capability_as_the_probe_does(monkeypatch):
    import torch

    from ledger.training.device import resolve_precision

    cuda = torch.device("cuda", 0)  # only its capability is asked: no card needed
    for capability, expected in (((7, 5), "fp16"), ((6, 0), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        resolved = resolve_precision("auto", cuda)
        assert resolved.name == expected == precision_for("auto", capability)
        assert resolved.scaled == (expected == "fp16")  # fp16 trains with a grad scaler
    assert resolve_precision("fp32", cuda).name == "fp32"  # a named precision is kept
