"""Time one batch of GPU-style augmentation on the CPU: ledger's one-pass aug_transforms against the
old crop + flip and (when importable) kornia's AugmentationSequential with the same settings.

kornia is not a ledger dependency; put it on the path for this script only, e.g.

    uv pip install --python .venv/bin/python --target /tmp/kornia_pkgs --no-deps kornia kornia_rs
    PYTHONPATH=/tmp/kornia_pkgs .venv/bin/python bench/bench_augment.py

Each method sees the same uint8 batch and returns normalised float images of the model's size.
Medians of interleaved rounds; results go to results/augment.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, append_record, load_average, machine, now  # noqa: E402

from ledger.data.augment import BatchTransform  # noqa: E402
from ledger.spec.loader import AugmentSpec  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def old_crop_flip(size, min_scale=0.75):
    """ledger's transform before aug_transforms: random resized crop and flip in one affine grid."""
    mean, std = torch.tensor(MEAN).view(1, -1, 1, 1) * 255, torch.tensor(STD).view(1, -1, 1, 1) * 255
    log_ratio = (math.log(3 / 4), math.log(4 / 3))

    def run(images, generator):
        x = (images.float() - mean) / std
        batch = x.shape[0]
        uniform = lambda low, high: torch.rand(batch, generator=generator) * (high - low) + low  # noqa: E731
        area, ratio = uniform(min_scale, 1.0), torch.exp(uniform(*log_ratio))
        width, height = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
        sign = torch.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0)
        theta = torch.zeros(batch, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = width * sign, uniform(-1.0, 1.0) * (1 - width)
        theta[:, 1, 1], theta[:, 1, 2] = height, uniform(-1.0, 1.0) * (1 - height)
        grid = F.affine_grid(theta, [batch, 3, *size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    return run


def kornia_sequence(size, augment: AugmentSpec):
    """The same recipe from kornia's parts: each geometric augmentation is its own warp."""
    import kornia.augmentation as K

    sequence = K.AugmentationSequential(
        K.RandomHorizontalFlip(p=0.5),
        K.RandomPerspective(distortion_scale=augment.max_warp, p=augment.p_affine),
        K.RandomAffine(degrees=augment.max_rotate, scale=(augment.min_zoom, augment.max_zoom), p=augment.p_affine,
                       padding_mode="reflection"),
        K.RandomResizedCrop(size, scale=(augment.min_scale, 1.0), ratio=(1.0, 1.0)),
        K.ColorJiggle(brightness=augment.max_lighting, contrast=augment.max_lighting, p=augment.p_lighting),
        K.Normalize(mean=torch.tensor(MEAN), std=torch.tensor(STD)),
    )
    return lambda images, generator: sequence(images.float() / 255)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    size = (args.size, args.size)
    augment = AugmentSpec()  # fastai's defaults, min_scale 0.75 as the lesson
    images = torch.randint(0, 256, (args.batch, 3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    methods = {
        "ledger aug_transforms (one pass)": BatchTransform(size, MEAN, STD, augment).random,
        "old crop+flip": old_crop_flip(size, augment.min_scale),
        "plain (resize+normalise)": lambda x, g: BatchTransform(size, MEAN, STD, None).plain(x),
    }
    try:
        methods["kornia AugmentationSequential"] = kornia_sequence(size, augment)
    except ImportError:
        print("kornia not importable: skipped (see this file's docstring)")
    generator = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in methods}
    start = time.perf_counter()
    with torch.no_grad():
        for name, run in methods.items():  # warm-up: first-call allocations and kernel selection
            run(images, generator)
        for _ in range(args.rounds):  # interleaved, so a busy moment on a shared machine hits all alike
            for name, run in methods.items():
                began = time.perf_counter()
                run(images, generator)
                times[name].append(time.perf_counter() - began)
    rows = [{"method": name, "median_ms": round(1000 * statistics.median(t), 1),
             "images_per_s": round(args.batch / statistics.median(t), 1), "rounds_ms": [round(1000 * x, 1) for x in t]}
            for name, t in times.items()]
    ours = rows[0]["median_ms"]
    for row in rows:
        row["vs_ledger"] = round(row["median_ms"] / ours, 2)
    line = {
        "benchmark": "augment", "device": "cpu", "batch": args.batch, "size": args.size, "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(), "augment": dataclasses.asdict(augment),
        "rows": rows, "benchmark_seconds": round(time.perf_counter() - start, 2),
        "kornia": _kornia_version(), "load_average": load_average(), "machine": machine(), "date": now(),
        "notes": ["uint8 (B,3,h,w) in, normalised float (B,3,size,size) out; medians of interleaved rounds; "
                  "kornia: flip, perspective, affine, resized crop as separate warps, then ColorJiggle"],
    }
    append_record(line, RESULTS_DIR, "augment")
    print(f"batch {args.batch}x3x{args.size}x{args.size}, CPU, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} rounds")
    print(f"{'method':36s} {'ms/batch':>9s} {'images/s':>9s} {'x ledger':>9s}")
    for row in rows:
        print(f"{row['method']:36s} {row['median_ms']:9.1f} {row['images_per_s']:9.1f} {row['vs_ledger']:9.2f}")


def _kornia_version() -> str | None:
    try:
        import kornia

        return kornia.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
