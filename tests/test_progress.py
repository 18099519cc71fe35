"""Progress on every long step: the library calls (done, total) callbacks and never prints; the
command line draws them as transient bars on a terminal and as single lines elsewhere."""

import io

from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from test_train import CPU, FP32, random_images, tiny_vit, transform_for

from ledger.data.images import load_images
from ledger.cli.progress import ConsoleEvents, ProbeDisplay, RunProgress, StageDisplay
from ledger.cli.tables import duration
from ledger.data.batches import Batches
from ledger.probe.accumulation import Trial
from ledger.training.device import Runtime
from ledger.training.callbacks import SilentProgress, stage_callback
from ledger.training.inference import tta


def test_decoding_reports_every_image_in_order_and_a_cache_hit_reports_nothing(tmp_path):
    paths = []
    for i in range(7):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (10, 12), (i * 30, 0, 0)).save(paths[-1])
    calls = []
    load_images(tuple(paths), (8, 8), "squish", tmp_path / "cache", threads=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(d, 7) for d in range(1, 8)]
    calls.clear()
    load_images(tuple(paths), (8, 8), "squish", tmp_path / "cache", progress=lambda d, t: calls.append((d, t)))
    assert calls == []


def test_tta_counts_batches_over_all_its_passes():
    images, _ = random_images(10)
    batches = Batches(images, None, np.arange(10), batch_size=4)  # 3 batches
    calls = []
    runtime = Runtime(CPU, FP32, 1, transform_for(), torch.Generator().manual_seed(0))
    tta(tiny_vit(), batches, runtime, n=2, beta=0.25, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(d, 9) for d in range(1, 10)]  # 3 passes of 3 batches, counted through


def test_progress_hooks_are_declared_no_ops_and_stage_callback_binds_a_name():
    assert stage_callback(None, "tta test") is None
    silent = SilentProgress()
    for hook, args in (("resumed", (2,)), ("start", ("train", 0, 3, 10)), ("step", (1, 0.5, 100.0)),
                       ("stage", ("tta test", 1, 2))):
        assert getattr(silent, hook)(*args) is None  # every hook exists on the base class and does nothing

    class Stages(SilentProgress):
        def __init__(self):
            self.seen = []

        def stage(self, name, done, total):
            self.seen.append((name, done, total))

    progress = Stages()
    stage_callback(progress, "tta test")(2, 5)
    assert progress.seen == [("tta test", 2, 5)]


def _console(terminal: bool):
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=80), out


def test_stages_without_a_terminal_are_one_line_each_and_validation_none():
    console, out = _console(False)
    run = RunProgress(ConsoleEvents(console, []), "[1/1] convnext")
    for name in ("decoding train images", "validation", "tta test"):
        for done in range(1, 4):
            run.stage(name, done, 3)
    assert out.getvalue().splitlines() == ["[1/1] convnext decoding train images: 3/3 images",
                                           "[1/1] convnext tta test: 3/3 batches"]


def test_stages_on_a_terminal_are_transient_bars():
    console, out = _console(True)
    plan = SimpleNamespace(model=SimpleNamespace(epochs=1, freeze_epochs=0, finetune=False, name="m"))
    with ConsoleEvents(console, [plan]) as events:
        run = RunProgress(events, "[1/1] m")
        run.stage("tta test", 1, 3)
        assert [t.description for t in events.bar.tasks][-1] == "[1/1] m tta test"
        run.stage("tta test", 3, 3)
        assert all("tta" not in t.description for t in events.bar.tasks)  # gone when done
    assert "tta test: 3/3" not in out.getvalue()


def test_probe_display_keeps_one_line_per_trial():
    console, out = _console(False)
    display = ProbeDisplay(console)
    display.decoding("convnext", 6, 6)
    display.trial_started("convnext", 1, 8)
    fits = Trial(k=1, micro_batch=8, peak_bytes=2**30, out_of_memory=False, seconds=1.5, startup_seconds=0.5)
    display.trial_finished("convnext", fits, limit_bytes=2 * 2**30)
    oom = Trial(k=2, micro_batch=4, peak_bytes=None, out_of_memory=True, seconds=1.0, startup_seconds=0.0)
    display.trial_finished("convnext", oom, limit_bytes=2 * 2**30)
    # The same words as probe-memory's table: yes / OOM / error / no.
    assert out.getvalue().splitlines() == ["convnext: k = 1 (micro-batch 8) peak 1.0 GiB: fits yes  2.0s",
                                           "convnext: k = 2 (micro-batch 4) peak -: fits OOM  1.0s"]
    console, out = _console(True)
    display = ProbeDisplay(console)
    display.trial_started("convnext", 2, 4)
    assert display.bar is not None and display.bar.tasks[0].description == "convnext: trial k = 2 (micro-batch 4)"
    display.trial_finished("convnext", fits, limit_bytes=2 * 2**30)
    assert display.bar is None


def test_stage_display_draws_nothing_from_the_library_side():
    console, out = _console(False)
    with StageDisplay(console) as stage:
        for done in range(1, 5):
            stage("decoding", done, 4)
    assert out.getvalue().splitlines() == ["decoding: 4/4 images"]


def test_off_a_terminal_epoch_lines_count_epochs_and_give_an_eta(monkeypatch):
    from ledger.training.callbacks import EpochMetrics

    console, out = _console(False)
    plans = [SimpleNamespace(model=SimpleNamespace(epochs=3, freeze_epochs=1, finetune=True, name="m"))] * 2
    with ConsoleEvents(console, plans) as events:  # 2 runs of 1 frozen + 3 epochs: 8 epochs
        run = RunProgress(events, "[1/2] m", "m")
        for epoch, seconds in ((1, 10.0), (2, 20.0)):
            run.start("train", epoch - 1, 4, steps=5)
            run.end(EpochMetrics("train", epoch, 0.5, None, None, 100, seconds, 0.01))
    lines = out.getvalue().splitlines()
    # Mean epoch 10 s then 15 s, times the epochs left: 7 x 10 = 70 s, 6 x 15 = 90 s.
    assert lines[0].startswith("[1/2] m train epoch 1/4: ") and lines[0].endswith("ETA 1m 10s (7 epochs left)")
    assert lines[1].startswith("[1/2] m train epoch 2/4: ") and lines[1].endswith("ETA 1m 30s (6 epochs left)")


def test_the_eta_times_each_entry_at_its_own_epochs():
    from ledger.training.callbacks import EpochMetrics

    console, out = _console(False)
    fast = SimpleNamespace(model=SimpleNamespace(epochs=2, freeze_epochs=0, finetune=False, name="fast"))
    slow = SimpleNamespace(model=SimpleNamespace(epochs=2, freeze_epochs=0, finetune=False, name="slow"))
    with ConsoleEvents(console, [fast, slow]) as events:
        for label, entry, seconds in (("[1/2] fast", "fast", 1.0), ("[1/2] fast", "fast", 1.0),
                                      ("[2/2] slow", "slow", 20.0)):
            run = RunProgress(events, label, entry)
            run.start("train", 0, 2, steps=5)
            run.end(EpochMetrics("train", 1, 0.5, None, None, 100, seconds, 0.01))
    # One slow epoch is left: 20 s, not the 7 s a mean over both entries' epochs (1, 1, 20) would say.
    assert out.getvalue().splitlines()[-1].endswith("ETA 20s (1 epochs left)")


def test_one_duration_format():
    assert [duration(s) for s in (12.3, 754, 45296)] == ["12s", "12m 34s", "12h 34m"]


def test_off_a_terminal_a_long_stage_prints_its_progress_with_a_unit(monkeypatch):
    import ledger.cli.progress as progress

    clock = iter([0.0, 31.0, 32.0, 70.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    console, out = _console(False)
    run = RunProgress(ConsoleEvents(console, []), "[1/1] m")
    for done in (1, 6, 7, 12):
        run.stage("tta test", done, 12)
    assert out.getvalue().splitlines() == ["[1/1] m tta test: 6/12 batches", "[1/1] m tta test: 12/12 batches"]
