"""The same 4 tiny runs with the local executor and with the Ray executor (2 CPU workers, 1 CPU and
one torch thread each), on this machine; one JSON line to bench/results/ray.jsonl.

    .venv/bin/python bench/bench_ray.py            # needs the extra: uv sync --extra ray --group dev

The local executor trains the runs one after another with torch's threads over every core (what
`ledger train` does); Ray trains two at a time, one core each. Ray's wall time is given with and
without starting Ray itself, which a cluster that is already up does not pay.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS_DIR, append_record, load_average, machine, now

TINY_CONVNEXT = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}


class Quiet:
    """ExperimentEvents that show nothing: only wall time is measured."""

    def run_started(self, index, total, plan):
        return None

    def run_finished(self, index, total, plan, result):
        return None


def _spec(folder: Path, root: Path, epochs: int) -> Path:
    path = folder / "bench-ray.yaml"
    path.write_text(
        f"name: bench-ray\n"
        f"data: {{root: {root}, labels: train.csv}}\n"
        f"train: {{batch_size: 32, epochs: {epochs}, lr: 0.002}}\n"
        f"tta: {{n: 2, beta: 0.25}}\n"
        f"models:\n"
        f"  - {{name: convnext, arch: convnext_atto, size: 32, runs: 4, accum: 1,"
        f" model_kwargs: {json.dumps(TINY_CONVNEXT)}}}\n")
    return path


def _plans(spec, home: Path):
    from ledger.data import load_competition
    from ledger.execute import cached_images
    from ledger.experiment import plan_experiment
    from ledger.store import Store

    store = Store(home)
    # Decoded before the clock starts, for both executors alike: the bench measures training.
    cached_images(load_competition(spec.data), spec.models[0], home / "cache")
    return store, plan_experiment(spec, spec.models, store, lambda model: model.accum)


def measure(train_per_class: int, epochs: int) -> dict:
    import ray
    import torch

    from ledger.experiment import train_experiment
    from ledger.fashion import write_competition
    from ledger.ray_executor import RayOptions, train_on_ray
    from ledger.spec import load_spec

    folder = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    root = folder / "competition"
    write_competition(root, seed=0, train_per_class=train_per_class, test=200)
    spec = load_spec(_spec(folder, root, epochs))

    local, local_seconds = {}, {}
    for threads in (1, torch.get_num_threads()):  # one thread, as each Ray worker has; then torch's default
        torch.set_num_threads(threads)
        store, plans = _plans(spec, folder / f"local-{threads}")
        started = time.perf_counter()
        local[threads] = train_experiment(spec, plans, store, Quiet(), torch.device("cpu"))
        local_seconds[threads] = time.perf_counter() - started

    store, plans = _plans(spec, folder / "ray")
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_start_seconds = time.perf_counter() - started
    remote = train_on_ray(spec, plans, store, Quiet(), RayOptions(cpus_per_run=1))
    ray_seconds = time.perf_counter() - started
    ray.shutdown()

    results = [r for rs in local.values() for r in rs] + remote
    assert all(r.status == "done" for r in results), [r.error for r in results]
    ray_train = sum(r.summary["train_seconds"] for r in remote)
    base = local_seconds[1]
    return {
        "runs": len(plans), "train_per_class": train_per_class, "epochs": epochs,
        "local_seconds_1_thread": round(base, 2),
        f"local_seconds_{max(local_seconds)}_threads": round(local_seconds[max(local_seconds)], 2),
        "ray_seconds": round(ray_seconds, 2),
        "ray_start_seconds": round(ray_start_seconds, 2),
        "ray_seconds_without_start": round(ray_seconds - ray_start_seconds, 2),
        "ratio_ray_over_local": round(ray_seconds / base, 3),
        "ratio_ray_without_start_over_local": round((ray_seconds - ray_start_seconds) / base, 3),
        "ratio_ray_over_local_all_threads": round(ray_seconds / local_seconds[max(local_seconds)], 3),
        "train_seconds_per_run_local_1_thread": [round(r.summary["train_seconds"], 2) for r in local[1]],
        "train_seconds_per_run_ray": [round(r.summary["train_seconds"], 2) for r in remote],
        # What a run costs Ray beyond its training loop, with 2 runs at a time: process start, imports,
        # data and model set-up, TTA, the home check's worker.
        "ray_overhead_seconds_per_run": round(((ray_seconds - ray_start_seconds) * 2 - ray_train) / len(remote), 2),
        "ray_workers": len({r.pid for r in remote}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "ray.jsonl")
    args = parser.parse_args()

    figures = measure(args.train_per_class, args.epochs)
    line = {"benchmark": "ray", **figures, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average": load_average(), "machine": machine(), "date": now()}
    line["note"] = (
        f"Ray with 2 one-core workers took {figures['ratio_ray_over_local']:.2f}x the wall time of the local executor "
        f"with one thread ({figures['ratio_ray_without_start_over_local']:.2f}x without starting Ray). What limits it "
        f"here: Ray's start-up ({figures['ray_start_seconds']:.0f} s), a fresh process per run (max_calls=1) that imports "
        f"torch and timm and sets its run up again (about {figures['ray_overhead_seconds_per_run']:.0f} s a run beyond "
        f"its training loop, against runs that train for seconds), and two cores shared with everything else on this "
        f"machine (load average {line['load_average']}), so two workers can at best halve the time.")
    append_record(line, args.out.parent, args.out.stem)
    sys.stdout.write(json.dumps(line, indent=2) + "\n")


if __name__ == "__main__":
    main()
