"""lr-find: fastai's smoothing, schedule, stop rule and the four suggestion methods on hand-made
curves (expected indices worked out by hand in the comments), exact accumulation, the frozen body,
and the command end to end on a tiny competition."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import TINY_CONVNEXT, write_spec
from ledger.cli import app
from ledger.training.lr_find import (
    SmoothLoss, exponential_lr, minimum, range_test, slide, steep, suggest, suggestion_window, valley,
)
from ledger.training.models import freeze_body, split_body_head
from ledger.data.batches import Batches
from ledger.training.device import Runtime, resolve_precision
from ledger.training.loss import Criterion
from ledger.training.step import StepSettings

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)


# ---------------------------------------------------------------- smoothing and schedule


def test_smooth_loss_is_debiased_ema():
    smooth = SmoothLoss(0.98)
    # Debiasing: the first value is the loss itself, not 2% of it.
    assert smooth.add(2.0) == pytest.approx(2.0)
    # avg = 0.98 * 0.04 + 0.02 * 1 = 0.0592; debiased by 1 - 0.98**2 = 0.0396 -> (0.98*2 + 1) / 1.98
    assert smooth.add(1.0) == pytest.approx((0.98 * 2 + 1) / 1.98)
    constant = SmoothLoss(0.98)
    assert [constant.add(0.7) for _ in range(5)] == pytest.approx([0.7] * 5)


def test_exponential_schedule_matches_fastai_sched_exp():
    assert exponential_lr(0, 100) == pytest.approx(1e-7)
    assert exponential_lr(50, 100) == pytest.approx(1e-3)  # halfway in log space between 1e-7 and 10
    assert exponential_lr(100, 100) == pytest.approx(10.0)


# ---------------------------------------------------------------- suggestions on hand-made curves


def test_valley_hand_curve():
    losses = np.array([5, 4, 6, 3, 2, 2.5, 1, 0.5, 3], dtype=float)
    lrs = 10.0 ** np.arange(-8, 1)
    # Longest decreasing run ending at each point: [1, 2, 1, 3, 4, 4, 5, 6, 3] (5, 4, 3, 2, 1, 0.5).
    # It ends at 7 with length 6; fastai's start is 7 - 6 = 1; span (7 - 1) / 3 = 2;
    # index = 1 + int(2) + int(1) = 4.
    suggestion = valley(lrs, losses)
    assert suggestion.lr == lrs[4]
    assert suggestion.point == (lrs[4], 2.0)


def test_slide_hand_curve():
    # 18 points falling by 0.1 each, then a sharp rise at 18 and 19.
    losses = np.array([3 - 0.1 * i for i in range(18)] + [5.0, 8.0])
    lrs = np.logspace(-6, 0, 20)
    # np.gradient: -0.1 at 0..16, 1.8 at 17, 3.35 at 18, 3.0 at 19. Windows of 15 points from the
    # end: (19, 4) differ by 3.1 -> lrs[4]; (18, 3) by 3.45 -> lrs[3]; (17, 2) by 1.9 -> lrs[2];
    # (16, 1) by 0 <= 0.005: stop. Suggestion lrs[2], marked at the loss there (2.8).
    suggestion = slide(lrs, losses)
    assert suggestion.lr == pytest.approx(lrs[2])
    assert suggestion.point[1] == pytest.approx(2.8)
    assert slide(lrs[:15], losses[:15]) is None  # shorter than the 15-point window


def test_minimum_hand_curve():
    losses = np.array([3, 2, 1.5, 1.6, 4])
    lrs = 10.0 ** np.arange(-5, 0)
    # Lowest loss at index 2 (lr 1e-3): suggest a tenth of it, marked at the minimum itself.
    suggestion = minimum(lrs, losses)
    assert suggestion.lr == pytest.approx(1e-4)
    assert suggestion.point == (pytest.approx(1e-3), 1.5)


def test_steep_is_per_log_lr_not_per_point():
    lrs = np.array([1e-4, 1e-3, 1e-1, 1e0])
    losses = np.array([3.0, 2.5, 1.6, 1.5])
    # Drops per point: -0.5, -0.9, -0.1; per unit of ln(lr) (spans 1, 2, 1 decades):
    # -0.5, -0.45, -0.1 (x 1/ln 10). The steepest segment starts at index 0, not 1.
    suggestion = steep(lrs, losses)
    assert suggestion.lr == pytest.approx(1e-4)
    assert suggestion.point == (pytest.approx(1e-4), 3.0)


def test_suggestion_window_drops_warmup_tail_and_nan():
    lrs = [exponential_lr(i, 100) for i in range(100)]
    losses = list(np.linspace(3, 1, 100))
    window_lrs, window_losses = suggestion_window(lrs, losses, 100)
    assert len(window_lrs) == 85 and window_lrs[0] == lrs[10] and window_losses[-1] == losses[94]
    losses[50] = float("nan")
    assert len(suggestion_window(lrs, losses, 100)[1]) == 40  # points 10..49
    # Diverged at once: nothing to suggest from, but no crash.
    assert suggest(lrs[:12], losses[:12], 100) == {"valley": None, "slide": None, "minimum": None, "steep": None}


# ---------------------------------------------------------------- the range test


def _toy(n=64, classes=4, seed=0, side=8):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, side, side), dtype=np.uint8)
    labels = rng.integers(0, classes, size=n).astype(np.int64)
    return images, labels


def _linear(seed=0):
    # Linear on purpose: no dead ReLUs to cap the loss, so learning rates near 10 really diverge.
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(192, 4))


def plain(x):
    return x.float() / 255


def _runtime(accum=1, prepare=plain):
    """The range test's runtime with `prepare` as the (augmentation-free) batch transform."""
    transform = SimpleNamespace(random=lambda x, generator: prepare(x), plain=prepare, erase=lambda x, generator: x)
    return Runtime(CPU, FP32, accum, transform, torch.Generator().manual_seed(0))


def _range_test(net, batches, accum=1, prepare=plain, **options):
    return range_test(net, batches, _runtime(accum, prepare), Criterion(4), StepSettings(), **options)


def test_range_test_schedule_and_stop_on_divergence():
    images, labels = _toy()
    batches = Batches(images, labels, np.arange(len(images)), 16, shuffle=True, drop_last=True, seed=0)
    seen = []
    # Raw pixel values (0-255): once Adam's steps near 1, the logits swing by hundreds and the
    # loss blows up before 100 batches, after going round the 4 batches many times.
    test = _range_test(_linear(), batches, prepare=lambda x: x.float(), num_it=100,
                      progress=lambda *args: seen.append(args))
    assert test.stopped in ("diverged", "non-finite")
    assert 4 < len(test.lrs) < 100
    assert test.lrs == pytest.approx([exponential_lr(i, 100) for i in range(len(test.lrs))])
    assert [s[0] for s in seen] == list(range(1, len(test.lrs) + 1))
    # The stop rule: every point before the last stays within 4x the running minimum; the last one does not.
    running = np.minimum.accumulate(test.losses[:-1])
    assert np.all(np.array(test.losses[:-1]) <= 4 * running)
    last = test.losses[-1]
    assert not math.isfinite(last) or last > 4 * running[-1]


def test_range_test_runs_num_it_batches_without_stop_div():
    images, labels = _toy()
    batches = Batches(images, labels, np.arange(len(images)), 16, shuffle=True, drop_last=True, seed=0)
    test = _range_test(_linear(), batches, end_lr=1e-3, num_it=10, stop_div=False)
    assert test.stopped == "num_it" and len(test.lrs) == 10 and len(test.raw_losses) == 10


def test_accumulation_does_not_change_the_curve():
    # Exact accumulation: 4 micro-batches of 4 train as one batch of 16, so the curve is the same.
    images, labels = _toy()
    curves = []
    for accum in (1, 4):
        batches = Batches(images, labels, np.arange(len(images)), 16, shuffle=True, drop_last=True, seed=0)
        test = _range_test(_linear(), batches, accum, end_lr=1e-2, num_it=20, stop_div=False)
        curves.append(test.raw_losses)
    np.testing.assert_allclose(curves[0], curves[1], rtol=1e-4)


def test_frozen_body_is_not_trained():
    from ledger.training.models import create_model
    from ledger.spec.loader import ModelSpec

    net = create_model(ModelSpec(name="m", arch="convnext_atto", size=(32, 32), model_kwargs=TINY_CONVNEXT), 4)
    freeze_body(net, True)
    body, head = split_body_head(net)
    body = [p for p in body if p.requires_grad is False]  # fastai's train_bn: norm layers still train
    before_body, before_head = [p.detach().clone() for p in body], [p.detach().clone() for p in head]
    images, labels = _toy(n=16, side=32)
    batches = Batches(images, labels, np.arange(16), 8, seed=0)
    _range_test(net, batches, 2, end_lr=1e-2, num_it=6, stop_div=False)
    assert all(torch.equal(a, b) for a, b in zip(before_body, body))
    assert any(not torch.equal(a, b) for a, b in zip(before_head, head))


def test_empty_training_split_is_an_error():
    from ledger.errors import LedgerError

    images, labels = _toy(n=4)
    with pytest.raises(LedgerError, match="no training batches"):
        _range_test(_linear(), Batches(images, labels, np.arange(0), 8))


# ---------------------------------------------------------------- the command


def _spec(tmp_path, competition, finetune="false", models=1):
    entries = "".join(
        f"  - {{name: m{i}, arch: convnext_atto, size: 32, accum: 2, finetune: {finetune},"
        f" model_kwargs: {json.dumps(TINY_CONVNEXT)}}}\n" for i in range(models))
    return write_spec(tmp_path / "spec.yaml", competition, entries)


def test_cli_json_records_and_plots(tmp_path, tiny_competition):
    from ledger.store.database import Store

    spec = _spec(tmp_path, tiny_competition, finetune="true")
    home = tmp_path / "home"
    result = CliRunner().invoke(app, ["lr-find", str(spec), "--json", "--num-it", "20", "--home", str(home)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stdout is the JSON and nothing else
    assert set(data) == {"suggestions", "plot"}
    assert set(data["suggestions"]) == {"valley", "slide", "minimum", "steep"}
    plot = home / "tiny" / "lr_find" / data["plot"].rsplit("/", 1)[-1]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    rows = Store(home).lr_finds("tiny")
    assert len(rows) == 1
    row = rows[0]
    assert (row.model, row.accum, row.frozen, row.batches) == ("m0", 2, 1, len(json.loads(row.curve)["lrs"]))
    assert row.suggestions == data["suggestions"] and (home / row.plot) == plot
    # The model is thrown away: nothing but the ledger, the image cache and the plot is written.
    written = {p.relative_to(home).parts[0] for p in home.iterdir()}
    assert written <= {"ledger.db", "ledger.db-wal", "ledger.db-shm", "cache", "tiny"}
    assert [p.name for p in (home / "tiny").rglob("*") if p.is_file()] == [plot.name]


def test_cli_table_and_out(tmp_path, tiny_competition):
    spec = _spec(tmp_path, tiny_competition)
    out = tmp_path / "plots" / "lr.png"
    result = CliRunner().invoke(app, ["lr-find", str(spec), "--model", "m0", "--num-it", "12", "--out", str(out),
                                      "--home", str(tmp_path / "home")])
    assert result.exit_code == 0, result.output
    assert "minimum/10" in result.stdout and out.is_file()
    assert "lr-find batch 1/12" in result.stdout  # plain progress lines off a terminal


def test_cli_needs_model_when_the_spec_has_several(tmp_path, tiny_competition):
    spec = _spec(tmp_path, tiny_competition, models=2)
    result = CliRunner().invoke(app, ["lr-find", str(spec), "--home", str(tmp_path / "home")])
    assert result.exit_code == 2
    assert "--model is needed" in result.stderr and "m0, m1" in result.stderr


def test_a_v2_ledger_gains_the_lr_finds_table_and_keeps_its_runs(tmp_path):
    from ledger.store.migrations import SCHEMA_VERSION
    from ledger.store.database import Store

    from conftest import ledger_at_version

    home = tmp_path / "home"
    db = ledger_at_version(home, 2)  # a ledger as schema 2 left it
    db.execute("INSERT INTO runs (id, experiment, model, arch, size, status, started_at)"
               " VALUES ('r1', 'tiny', 'm', 'a', '32', 'done', 'now')")
    db.close()
    store = Store(home)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [r.id for r in store.runs()] == ["r1"]
    store.record_lr_find(dict(id="l1", experiment="tiny", model="m", suggestions=json.dumps({"valley": 1e-3}),
                              plot=str(home / "tiny" / "lr.png")))
    row = store.lr_finds("tiny")[0]
    assert row.suggestions == {"valley": 1e-3} and row.plot == "tiny/lr.png" and row.created_at
