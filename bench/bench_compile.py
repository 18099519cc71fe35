"""Does `torch.compile` (timm's --torchcompile: inductor, default mode) pay back its compile time in
one of the default's runs on a CPU core? One JSON line to bench/results/compile.jsonl.

    taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/python bench/bench_compile.py            # convnext, swin
    taskset -c 1 env OMP_NUM_THREADS=1 .venv/bin/python bench/bench_compile.py --models vit --steps 30

For each entry of experiments/fashion.yaml named, the same training loop (the entry's network as
`model_on_device` builds it, AdamW, its augmentation, batches of the embedded competition's images)
runs eager and under `torch.compile(net)`, each from the same seed:

- compile seconds: the compiled side's first `warmup` steps less what those steps take at its steady
  rate (what the first step's tracing and code generation cost, and any recompile the warm-up meets);
- eval compile seconds: the first forward in eval mode under no_grad (validation and TTA are another
  graph), for a full batch and for the short last batch of a fold (a new shape, so a recompile);
- steady images/s of both sides over `steps` timed steps after the warm-up;
- break-even: the training images after which the compiled side has caught up
  (compile seconds / (1/eager - 1/compiled)), against the run's own images (8,000 x epochs).

Inductor's compile workers are held to one (TORCHINDUCTOR_COMPILE_THREADS=1), as a run that has one
core of `make submission`'s two would have them. Set ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2 to measure AVX2 kernels; the line records those variables.
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # before torch is imported: inductor reads it then

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from common import DATA_DIR, RESULTS_DIR, SPEC_PATH, append_record, load_average, machine, now
from ledger.data.competition import load_competition
from ledger.data.images import load_images
from ledger.data.splits import split_indices
from ledger.spec.loader import load_spec
from ledger.training.device import model_on_device
from ledger.training.models import parameter_groups

ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
                 "TORCHINDUCTOR_COMPILE_THREADS", "OMP_NUM_THREADS")


def _step_seconds(model, images: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, compiled: bool,
                  total_steps: int, seed: int = 0) -> tuple[list[float], object]:
    """Seconds of each of `total_steps` training steps (data, forward, backward, optimizer), and the
    network trained (compiled or not) for the eval timings."""
    torch.manual_seed(seed)
    torch._dynamo.reset()  # no graph of an earlier side or entry is reused
    net, transform = model_on_device(model, int(labels.max()) + 1, torch.device("cpu"))
    train_net = torch.compile(net) if compiled else net
    optimizer = torch.optim.AdamW(parameter_groups(net, model.weight_decay), lr=model.lr)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_net.train()
    seconds = []
    for _ in range(total_steps):
        rows = np.sort(rng.choice(train_idx, model.batch_size, replace=False))
        started = time.perf_counter()
        x = transform.random(torch.from_numpy(np.asarray(images[rows])), generator)
        loss = F.cross_entropy(train_net(x), torch.from_numpy(labels[rows]).long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    return seconds, (train_net, transform)


def _eval_seconds(net_and_transform, images: np.ndarray, batch: int) -> float:
    net, transform = net_and_transform
    net.eval()
    started = time.perf_counter()
    with torch.no_grad():
        net(transform.plain(torch.from_numpy(np.asarray(images[:batch]))))
    return time.perf_counter() - started


def measure(model, images, labels, train_idx, warmup: int, steps: int, run_images: int) -> dict:
    sides = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        seconds, trained = _step_seconds(model, images, labels, train_idx, compiled, warmup + steps)
        steady = statistics.median(seconds[warmup:])
        # Eval: the first call of a full batch and of the fold's short last batch (2,000 % 64 = 16),
        # then a second full batch at its steady cost.
        first_full = _eval_seconds(trained, images, model.batch_size)
        first_short = _eval_seconds(trained, images, 16)
        steady_full = min(_eval_seconds(trained, images, model.batch_size) for _ in range(3))
        sides[name] = dict(
            first_step_s=round(seconds[0], 2), warmup_s=round(sum(seconds[:warmup]), 2),
            steady_step_s=round(steady, 4), img_s=round(model.batch_size / steady, 1),
            eval_first_full_s=round(first_full, 2), eval_first_short_s=round(first_short, 2),
            eval_steady_full_s=round(steady_full, 4),
        )
    eager, compiled = sides["eager"], sides["compiled"]
    compile_s = compiled["warmup_s"] - warmup * compiled["steady_step_s"] - (eager["warmup_s"] - warmup * eager["steady_step_s"])
    eval_compile_s = (compiled["eval_first_full_s"] - compiled["eval_steady_full_s"]) + compiled["eval_first_short_s"] \
        - (eager["eval_first_full_s"] - eager["eval_steady_full_s"]) - eager["eval_first_short_s"]
    saved_per_image = 1 / eager["img_s"] - 1 / compiled["img_s"]
    break_even = (compile_s + eval_compile_s) / saved_per_image if saved_per_image > 0 else None
    return dict(
        model=model.name, arch=model.arch, size=model.size_label, batch=model.batch_size,
        eager=eager, compiled=compiled,
        speedup=round(compiled["img_s"] / eager["img_s"], 3),
        compile_s=round(compile_s, 1), eval_compile_s=round(eval_compile_s, 1),
        break_even_images=round(break_even) if break_even is not None else None,
        run_images=run_images,
        pays_back=break_even is not None and break_even < run_images,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=lambda p: __import__("pathlib").Path(p), default=SPEC_PATH)
    parser.add_argument("--models", nargs="+", default=["convnext", "swin"])
    parser.add_argument("--warmup", type=int, default=5, help="steps before the clock starts (compile included)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per side")
    parser.add_argument("--results", type=__import__("pathlib").Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    spec = load_spec(args.spec)
    competition = load_competition(spec.data) if spec.data.root.is_dir() else None
    if competition is None:
        raise SystemExit(f"{spec.data.root}: no competition (make data writes {DATA_DIR})")
    labels = competition.train_labels
    train_idx, _ = split_indices(labels, 0.2, seed=0)
    rows = []
    for model in spec.models:
        if model.name not in args.models:
            continue
        images = load_images(competition.train_paths, model.item_size, model.resize)
        run_images = len(train_idx) * (model.epochs + (model.freeze_epochs if model.finetune else 0))
        row = measure(model, images, labels, train_idx, args.warmup, args.steps, run_images)
        rows.append(row)
        print(f"{row['model']}: eager {row['eager']['img_s']} img/s, compiled {row['compiled']['img_s']} img/s "
              f"(x{row['speedup']}); compile {row['compile_s']} s + eval {row['eval_compile_s']} s; break-even "
              f"{row['break_even_images']} images vs the run's {run_images}: pays back {row['pays_back']}", flush=True)
    line = dict(benchmark="compile", date=now(), machine=machine(), load_average=load_average(),
                environment={name: os.environ.get(name) for name in ISA_VARIABLES},
                torch_threads=torch.get_num_threads(), spec=str(args.spec), warmup=args.warmup, steps=args.steps,
                rows=rows, pays_back_everywhere=all(row["pays_back"] for row in rows))
    path = append_record(line, args.results, "compile")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
