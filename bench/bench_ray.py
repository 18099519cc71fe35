"""What a fresh process per run (`max_calls=1`) costs the Ray executor, against runs as long as this
machine affords; one JSON line to bench/results/ray.jsonl.

    .venv/bin/python bench/bench_ray.py            # needs the extra: uv sync --extra ray --group dev

Three measurements, on a local Ray of 2 one-core workers:
1. the bare cost: a task that imports torch, timm and ledger's training code, in a fresh process
   (what every run pays) and in a reused one (what a process kept across runs would pay);
2. a run's set-up, from its start until its first epoch begins: with the local executor (in this
   process, one thread) and as a Ray task (submission to the worker's first epoch event); the
   difference is what a process kept per device could save;
3. that difference as a share of each Ray run's wall time, for runs of `--epochs` epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS_DIR, append_record, load_average, machine, now

TINY_CONVNEXT = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}


class Timed:
    """ExperimentEvents that keep, per run, when it started, when its first epoch began and when it ended."""

    def __init__(self):
        self.started, self.first_epoch, self.finished = {}, {}, {}

    def run_started(self, index, total, plan):
        self.started[plan.run_id] = time.perf_counter()
        events = self

        class FirstEpoch:
            def start(self, phase, epoch, epochs, steps):
                events.first_epoch.setdefault(plan.run_id, time.perf_counter())

            def step(self, step, loss, images_per_s):
                return None

            def end(self, metrics):
                return None

        return FirstEpoch()

    def run_finished(self, index, total, plan, result):
        self.finished[plan.run_id] = time.perf_counter()

    def setup_seconds(self) -> list[float]:
        return [round(self.first_epoch[r] - self.started[r], 2) for r in self.started]

    def wall_seconds(self) -> list[float]:
        return [round(self.finished[r] - self.started[r], 2) for r in self.started]


def _imports() -> float:
    """Seconds importing torch, timm and ledger's training code (none in a process that already has)."""
    started = time.perf_counter()
    import timm  # noqa: F401
    import torch  # noqa: F401

    import ledger.runs.execution  # noqa: F401

    return time.perf_counter() - started


def bare_cost(rounds: int = 3) -> dict:
    """A task that only imports, one at a time: in a fresh process each time, then in one reused process."""
    import ray

    fresh = ray.remote(max_calls=1, num_cpus=1)(_imports)
    reused = ray.remote(max_calls=0, num_cpus=1)(_imports)
    figures = {}
    for name, task in (("fresh", fresh), ("reused", reused)):
        walls, imports = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            seconds = ray.get(task.remote())
            walls.append(time.perf_counter() - started)
            imports.append(seconds)
        # The reused process's first call is a fresh process's: only the later ones show reuse.
        kept = walls if name == "fresh" else walls[1:]
        figures[f"task_seconds_{name}"] = round(statistics.median(kept), 2)
        figures[f"import_seconds_{name}"] = round(statistics.median(imports if name == "fresh" else imports[1:]), 2)
    return figures


def _spec(folder: Path, root: Path, epochs: int, size: int) -> Path:
    path = folder / "bench-ray.yaml"
    path.write_text(
        f"name: bench-ray\n"
        f"data: {{root: {root}, labels: train.csv}}\n"
        f"train: {{batch_size: 32, epochs: {epochs}, lr: 0.002}}\n"
        f"tta: {{n: 2, beta: 0.25}}\n"
        f"models:\n"
        f"  - {{name: convnext, arch: convnext_atto, size: {size}, runs: 2, accum: 1,"
        f" model_kwargs: {json.dumps(TINY_CONVNEXT)}}}\n")
    return path


def _plans(spec, home: Path):
    from ledger.data.competition import load_competition
    from ledger.runs.execution import cached_images
    from ledger.executors.local import plan_experiment
    from ledger.store.database import Store

    store = Store(home)
    # Decoded before the clock starts, for both executors alike: the bench measures runs, not decoding.
    cached_images(load_competition(spec.data), spec.models[0], home / "cache")
    return store, plan_experiment(spec, spec.models, store, lambda model: model.accum)


def measure(train_per_class: int, epochs: int, size: int) -> dict:
    import ray
    import torch

    from ledger.executors.local import train_experiment
    from ledger.data.fashion_mnist import write_competition
    from ledger.executors.ray_executor import RayOptions, train_on_ray
    from ledger.spec.loader import load_spec

    folder = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    root = folder / "competition"
    write_competition(root, seed=0, train_per_class=train_per_class, test=200)
    spec = load_spec(_spec(folder, root, epochs, size))

    # One run in this process with one thread, as a Ray worker has: the in-process set-up.
    torch.set_num_threads(1)
    store, plans = _plans(spec, folder / "local")
    local_events = Timed()
    local = train_experiment(spec, plans[:1], store, local_events, torch.device("cpu"))

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_start_seconds = time.perf_counter() - started
    bare = bare_cost()
    store, plans = _plans(spec, folder / "ray")
    ray_events = Timed()
    remote = train_on_ray(spec, plans, store, ray_events, RayOptions(cpus_per_run=1))  # 2 runs, 2 slots: no queueing
    ray.shutdown()

    assert all(r.status == "done" for r in local + remote), [r.error for r in local + remote]
    local_setup = local_events.setup_seconds()[0]
    ray_setup, ray_wall = ray_events.setup_seconds(), ray_events.wall_seconds()
    extra = [round(s - local_setup, 2) for s in ray_setup]  # what a process kept across runs could save
    return {
        "train_per_class": train_per_class, "epochs": epochs, "size": size, "ray_start_seconds": round(ray_start_seconds, 2),
        **bare,
        "local_setup_seconds": local_setup, "local_wall_seconds": local_events.wall_seconds()[0],
        "local_train_seconds": round(local[0].summary["train_seconds"], 2),
        "ray_setup_seconds": ray_setup, "ray_wall_seconds": ray_wall,
        "ray_train_seconds": [round(r.summary["train_seconds"], 2) for r in remote],
        "fresh_process_seconds_per_run": extra,
        "fresh_process_share_of_run": [round(e / w, 3) for e, w in zip(extra, ray_wall)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "ray.jsonl")
    args = parser.parse_args()

    figures = measure(args.train_per_class, args.epochs, args.size)
    line = {"benchmark": "ray_startup", **figures, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average": load_average(), "machine": machine(), "date": now(),
            "command": "bench/bench_ray.py " + " ".join(sys.argv[1:])}
    share = statistics.median(figures["fresh_process_share_of_run"])
    line["note"] = (
        f"A fresh process per run costs {statistics.median(figures['fresh_process_seconds_per_run']):.1f} s of "
        f"set-up more than the same run in a live process ({figures['local_setup_seconds']:.1f} s there), "
        f"{share:.0%} of a Ray run of {statistics.median(figures['ray_wall_seconds']):.0f} s here; the bare task: "
        f"{figures['task_seconds_fresh']:.1f} s in a fresh process (imports {figures['import_seconds_fresh']:.1f} s) "
        f"against {figures['task_seconds_reused']:.2f} s in a reused one. Load average {line['load_average']}.")
    append_record(line, args.out.parent, args.out.stem)
    sys.stdout.write(json.dumps(line, indent=2) + "\n")


if __name__ == "__main__":
    main()
