"""Training throughput benchmarks.

train_throughput: images/s of ledger's training path (`fit` over `Batches`, random batch
augmentation, set up as `execute` does) against a bare PyTorch + timm loop written here
with no ledger code (same model, batch, size, data, optimizer, schedule and torch threads; a torch-only
random flip for augmentation). Target: ledger / bare >= 0.95.

data_path: the same ledger loop fed the real images as `load_images` returns them from its disk cache
(a memory map of the decoded PNGs) against a synthetic in-memory uint8 array of the same shape. Target:
ratio >= 0.95. Decode (no cache), cache write and cache hit are timed apart, and decode is set against
the time to train one epoch of the same images.

Each comparison is interleaved (A B A B ..., `rounds` each) so machine noise hits both sides, and
reports the medians. Only the steps after the warm-up are timed.

    .venv/bin/python bench/run.py --only train_throughput [--quick]
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import timm
import torch
import torch.nn.functional as F

from common import Context, Result
from ledger.data.competition import Competition, load_competition
from ledger.data.images import load_images
from ledger.data.splits import split_indices
from ledger.training.schedule import Phase
from ledger.data.batches import Batches
from ledger.training.device import Runtime, model_on_device, resolve_precision
from ledger.training.loss import Criterion
from ledger.training.step import StepSettings
from ledger.training.learner import Learner

TARGET_RATIO = 0.95


@dataclass(frozen=True)
class Plan:
    warmup: int  # steps before the clock starts: first-call allocations, lazy initialisation
    steps: int  # timed steps
    rounds: int  # interleaved A B pairs; the median of each side is reported


# Five short rounds rather than three long ones: the ratio is the median of each round's own
# ratio, so a slow spell of this shared machine skews one pair, not the verdict.
FULL, QUICK = Plan(warmup=5, steps=24, rounds=5), Plan(warmup=2, steps=6, rounds=1)


class TimedBatches:
    """`warmup + steps` batches from `batches` (starting a new shuffled pass when one runs out),
    noting the time when the warm-up is over and when the last batch has been trained on."""

    def __init__(self, batches: Batches, warmup: int, steps: int):
        self.batches, self.warmup, self.steps = batches, warmup, steps
        self.started = self.ended = None

    def __len__(self) -> int:
        return self.warmup + self.steps

    def __iter__(self):
        given = 0
        while True:
            for batch in self.batches:
                if given == self.warmup:
                    self.started = time.perf_counter()  # the loop asks for this batch when the warm-up is done
                yield batch
                given += 1
                if given == len(self):
                    # Asked for one more: the last step, optimizer and schedule included, is done.
                    self.ended = time.perf_counter()
                    return

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def ledger_loop(model, images: np.ndarray, competition: Competition, train_idx: np.ndarray, device: torch.device,
                plan: Plan, seed: int = 0, accum: int = 1) -> float:
    """Training images/s of ledger's path, built from the blocks `execute` uses (no validation)."""
    precision = resolve_precision(model.precision, device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net, transform = model_on_device(model, len(competition.vocab), device)
    batches = Batches(images, competition.train_labels, train_idx, model.batch_size, shuffle=True, drop_last=True,
                      seed=seed)
    timed = TimedBatches(batches, plan.warmup, plan.steps)
    runtime = Runtime(device, precision, accum, transform, generator)
    learner = Learner(net, timed, runtime, Criterion(len(competition.vocab), model.label_smoothing, model.mixup,
                                                     model.cutmix), StepSettings.of(model))
    learner.fit([Phase("train", 1, model.lr, pct_start=0.25, div=25.0)])
    return plan.steps * model.batch_size / timed.seconds


def bare_loop(arch: str, model_kwargs: dict, num_classes: int, images: torch.Tensor, labels: torch.Tensor,
              train_idx: torch.Tensor, batch_size: int, lr: float, weight_decay: float, device: torch.device,
              plan: Plan, seed: int = 0) -> float:
    """Training images/s of the plainest loop that does the same job: no ledger code at all."""
    torch.manual_seed(seed)
    # channels_last as ledger (train.model_on_device): this measures ledger's overhead, not the layout.
    net = timm.create_model(arch, pretrained=False, num_classes=num_classes, **model_kwargs).to(device)
    net = net.to(memory_format=torch.channels_last)
    config = timm.data.resolve_model_data_config(net)
    mean = torch.tensor(config["mean"], device=device).view(1, -1, 1, 1) * 255
    std = torch.tensor(config["std"], device=device).view(1, -1, 1, 1) * 255
    total = plan.warmup + plan.steps
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay, fused=True)  # as ledger
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.25)
    passes = -(-total * batch_size // len(train_idx))
    order = torch.cat([train_idx[torch.randperm(len(train_idx))] for _ in range(passes)])
    net.train()
    started = time.perf_counter()
    for step in range(total):
        if step == plan.warmup:
            started = time.perf_counter()
        rows = order[step * batch_size : (step + 1) * batch_size]
        x = (images[rows].to(device).float() - mean) / std
        flip = torch.rand(len(rows), device=device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), labels[rows].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return plan.steps * batch_size / (time.perf_counter() - started)


def _interleave(rounds: int, first, second, log, label: str) -> tuple[list[float], list[float]]:
    a, b = [], []
    for r in range(rounds):
        a.append(first())
        b.append(second())
        log.print(f"  {label} round {r + 1}/{rounds}: {a[-1]:.0f} vs {b[-1]:.0f} img/s ({a[-1] / b[-1]:.3f})",
                  highlight=False)
    return a, b


def _competition(context: Context) -> tuple[Competition, np.ndarray]:
    spec = context.spec()
    competition = load_competition(spec.data)
    train_idx, _ = split_indices(competition.train_labels, spec.split.valid_pct, seed=0)
    return competition, train_idx


def _cached(competition: Competition, model, context: Context) -> np.ndarray:
    """The model's decoded training images as a run after the first gets them: a cache hit (memory map)."""
    cache = context.workdir / "image-cache"
    load_images(competition.train_paths, model.item_size, model.resize, cache)
    return load_images(competition.train_paths, model.item_size, model.resize, cache)


def train_throughput(context: Context) -> Result:
    plan = QUICK if context.quick else FULL
    device = torch.device(context.device)
    spec = context.spec()
    competition, train_idx = _competition(context)
    rows = []
    for model in spec.models:
        images = _cached(competition, model, context)
        tensor = torch.from_numpy(np.array(images))  # the bare loop's data: one in-memory tensor
        labels, idx = torch.from_numpy(competition.train_labels), torch.from_numpy(train_idx)

        ledger_ips, bare_ips = _interleave(
            plan.rounds,
            lambda: ledger_loop(model, images, competition, train_idx, device, plan),
            lambda: bare_loop(model.arch, model.model_kwargs, len(competition.vocab), tensor, labels, idx,
                              model.batch_size, model.lr, model.weight_decay, device, plan),
            context.log, f"{model.name} ledger vs bare",
        )
        ledger_median, bare_median = statistics.median(ledger_ips), statistics.median(bare_ips)
        ratio = statistics.median(a / b for a, b in zip(ledger_ips, bare_ips))  # paired: A and B ran back to back
        rows.append(dict(model=model.name, arch=model.arch, size=model.size_label, batch=model.batch_size,
                         ledger_img_s=round(ledger_median, 1), bare_img_s=round(bare_median, 1), ratio=round(ratio, 3),
                         ledger_rounds=[round(x, 1) for x in ledger_ips], bare_rounds=[round(x, 1) for x in bare_ips],
                         passes=ratio >= TARGET_RATIO))
    worst = min(rows, key=lambda row: row["ratio"])
    return Result(
        name="train_throughput",
        summary=f"ledger / bare images/s: worst {worst['ratio']:.3f} ({worst['model']}); "
                + ", ".join(f"{r['model']} {r['ratio']:.3f}" for r in rows),
        target=f"ratio >= {TARGET_RATIO} for every model",
        passes=all(row["passes"] for row in rows),
        figures=dict(warmup_steps=plan.warmup, timed_steps=plan.steps, rounds=plan.rounds,
                     torch_threads=torch.get_num_threads(), accum=1,
                     precision=resolve_precision(spec.models[0].precision, device).name),
        rows=rows,
        notes=["ledger: fit over Batches of the cached (memory-mapped) images with BatchTransform.random "
               "(the entry's aug_transforms); bare: timm + AdamW + OneCycleLR over one in-memory uint8 tensor with a "
               "random flip; both channels_last with a fused AdamW. ratio: the median of the interleaved rounds' own ratios; "
               "img/s: medians of the rounds."],
    )


def _timed(function):
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started


def data_path(context: Context) -> Result:
    plan = QUICK if context.quick else FULL
    device = torch.device(context.device)
    spec = context.spec()
    competition, train_idx = _competition(context)
    paths = competition.train_paths
    rows = []
    for model in spec.models:
        _, decode_s = _timed(lambda: load_images(paths, model.item_size, model.resize, None))
        cache = context.scratch(f"cache-{model.name}")
        _, write_s = _timed(lambda: load_images(paths, model.item_size, model.resize, cache))
        from_disk, hit_s = _timed(lambda: load_images(paths, model.item_size, model.resize, cache))
        _, read_s = _timed(lambda: np.array(from_disk))  # what the memory map costs when every page is read
        assert isinstance(from_disk, np.memmap), "the second load_images should be a cache hit"
        synthetic = np.random.default_rng(0).integers(0, 256, size=from_disk.shape, dtype=np.uint8)

        disk_ips, memory_ips = _interleave(
            plan.rounds,
            lambda: ledger_loop(model, from_disk, competition, train_idx, device, plan),
            lambda: ledger_loop(model, synthetic, competition, train_idx, device, plan),
            context.log, f"{model.name} disk vs memory",
        )
        disk, memory = statistics.median(disk_ips), statistics.median(memory_ips)
        ratio = statistics.median(a / b for a, b in zip(disk_ips, memory_ips))  # paired rounds, as above
        epoch_s = len(paths) / disk  # training one epoch of the same images
        rows.append(dict(
            model=model.name, item_size=f"{model.item_size[0]}x{model.item_size[1]}", images=len(paths),
            decode_s=round(decode_s, 3), decode_img_s=round(len(paths) / decode_s, 1),
            decode_and_cache_write_s=round(write_s, 3), cache_hit_s=round(hit_s, 4), cache_read_all_s=round(read_s, 4),
            train_img_s_disk=round(disk, 1), train_img_s_memory=round(memory, 1), ratio=round(ratio, 3),
            epoch_s=round(epoch_s, 2), decode_vs_epoch=round(decode_s / epoch_s, 3), passes=ratio >= TARGET_RATIO,
        ))
    worst = min(rows, key=lambda row: row["ratio"])
    decode = max(rows, key=lambda row: row["decode_vs_epoch"])
    return Result(
        name="data_path",
        summary=f"cached disk images / in-memory images/s: worst {worst['ratio']:.3f} ({worst['model']}); "
                f"decoding all {decode['images']} images once takes at most {decode['decode_vs_epoch']:.0%} "
                f"of one epoch on them ({decode['decode_img_s']:.0f} decoded img/s vs "
                f"{decode['train_img_s_disk']:.0f} trained img/s)",
        target=f"ratio >= {TARGET_RATIO} for every model",
        passes=all(row["passes"] for row in rows),
        figures=dict(warmup_steps=plan.warmup, timed_steps=plan.steps, rounds=plan.rounds,
                     torch_threads=torch.get_num_threads()),
        rows=rows,
        notes=["decode_s: load_images without a cache (PNG decode + resize, threads); decode_and_cache_write_s: "
               "the first cached call; cache_hit_s: opening the cache (a memory map: pages are read as training "
               "touches them); cache_read_all_s: reading every page once (from the page cache here).",
               "decode_vs_epoch: one-time decode time / time to train one epoch of the same images; decoding "
               "happens once per model and size, then every run and epoch reads the cache."],
    )

