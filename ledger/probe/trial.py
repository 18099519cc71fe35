"""The real probe trial: a few steps of the training loop in a child process, as the target card runs them.

It runs in a fresh child (probe.run_in_child), so everything it sets is the child's alone: the
allocator cap, the attention kernels. On CUDA it trains at the target's precision with the target's
SDPA kernels and caps the caching allocator at the target's capacity less the context measured here;
on CPU it runs as training there does (float32 for `auto`). It also times the steps and a plain and an
augmented prediction pass, for ledger.probe.time_estimate.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ledger.probe.accumulation import Trial
from ledger.training.callbacks import Callback, StopFit


# A step's time needs more steps than its memory does: the first steps of a fresh process pay for
# kernel and allocator set-up, and on a shared machine single steps stall. The trial runs at least
# this many steps and takes the median after the first (same shapes, so the peak is unchanged).
TIMING_STEPS = 10


@dataclass(frozen=True)
class TrialTarget:
    """What the trial imitates: the target's capacity (None: no cap), its capability (None: the local
    device's kernels) and the precision the trial runs at (fp32, bf16 or fp16)."""

    capacity_bytes: int | None = None
    capability: tuple[int, int] | None = None
    precision: str = "fp32"
    cpu_threads: int | None = None  # a `--jobs` run's share of the cores (None: the process's own)


class StepTimer(Callback):
    """The trial's callback: notes the time each step starts, waits for the device after the last
    one, so that the last interval ends on the device's time, and stops the fit after `steps` steps.
    A step's time is the median over all steps but the first (warm-up): on a shared machine one step
    stalled by another process must not count three times over."""

    def __init__(self, steps: int):
        self.steps, self.times = steps, []

    def before_step(self, learner) -> None:
        self.times.append(time.perf_counter())

    def after_step(self, learner) -> None:
        if len(self.times) >= self.steps:
            learner.loss.item()  # waits for the device
            self.times.append(time.perf_counter())
            raise StopFit

    def step_seconds(self) -> float | None:
        intervals = [b - a for a, b in zip(self.times, self.times[1:])]
        later = sorted(intervals[1:] or intervals)  # one step only: its time, warm-up and all
        if not later:
            return None
        middle = len(later) // 2
        return later[middle] if len(later) % 2 else (later[middle - 1] + later[middle]) / 2


def _prediction_seconds(net, images, micro_batch: int, transform, device, precision, generator) -> tuple[float, float]:
    """Seconds per image of a plain and of an augmented prediction pass over up to 8 micro-batches of
    the probe images (as validation and TTA run them), each after a warm-up batch of its own: the
    augmentation's first batch sets up kernels a timed pass must not pay for."""
    import numpy as np
    import torch

    from ledger.data.batches import Batches
    from ledger.training.device import Runtime
    from ledger.training.inference import predict

    count = min(len(images), 8 * micro_batch)
    if count == 0:
        return 0.0, 0.0
    batches = Batches(images, None, np.arange(count), micro_batch)
    warm_up = Batches(images, None, np.arange(min(count, micro_batch)), micro_batch)
    timings = []
    runtime = Runtime(device, precision, 1, transform, generator)
    for augment in (None, lambda images, keys: runtime.augmented(images)):
        predict(net, warm_up, runtime, augment)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        predict(net, batches, runtime, augment)  # returns on the CPU: synchronised
        timings.append((time.perf_counter() - started) / count)
    return timings[0], timings[1]


def training_trial(model, paths: tuple, num_classes: int, steps: int, device: str, cache_dir: str,
                   target: TrialTarget | None = None, *, k: int, micro_batch: int) -> Trial:
    """Runs in the child: `steps` optimizer steps (at least TIMING_STEPS) of the real training loop for
    `model` with accumulation factor k, all layers trainable (the worst case), on the probe images."""
    import numpy as np
    import torch

    from ledger.data.batches import Batches
    from ledger.data.images import load_images
    from ledger.training.device import Runtime, model_on_device, resolve_precision
    from ledger.training.loss import Criterion
    from ledger.probe.memory import PeakMemory
    from ledger.spec.loader import check_model
    from ledger.training.learner import Learner
    from ledger.training.step import StepSettings
    from ledger.probe.targets import memory_fraction, sdpa_kernels

    target = target or TrialTarget(precision=model.precision)
    torch_device = torch.device(device)
    if target.cpu_threads:
        torch.set_num_threads(target.cpu_threads)
    # `ledger train` builds and runs every model on the meta device when it checks the spec, which
    # maps the same library code into memory; doing it here too, before the meter starts, keeps those
    # pages out of the probe's peak exactly as they are out of a real run's.
    check_model(Path("probe"), 0, model)
    # A cache hit (the parent decoded them), copied into memory before the meter starts: pages of a
    # memory-mapped file read during the steps would count as resident memory, as a real run's
    # decoded images (already in memory when its meter starts) do not.
    images = np.array(load_images(paths, model.item_size, model.resize, Path(cache_dir)))
    meter = PeakMemory(torch_device)  # from here on, as in a real run: model, optimizer, activations
    if torch_device.type == "cuda":
        torch_device = meter.device  # pinned to its card
        kernels = sdpa_kernels(target.capability)
        torch.backends.cuda.enable_flash_sdp(kernels["flash"])
        torch.backends.cuda.enable_mem_efficient_sdp(kernels["mem_efficient"])
        torch.backends.cuda.enable_math_sdp(kernels["math"])
        if target.capacity_bytes is not None:
            # The allocator may reserve what the target card leaves after its context: no more.
            context = meter.read() - torch.cuda.max_memory_reserved(torch_device)
            total = torch.cuda.get_device_properties(torch_device).total_memory
            torch.cuda.set_per_process_memory_fraction(memory_fraction(target.capacity_bytes, context, total),
                                                       torch_device)
    # Random weights: loading pretrained ones would change nothing in memory and need the hub.
    net, transform = model_on_device(dataclasses.replace(model, pretrained=False), num_classes, torch_device)
    # The smallest class repeated as needed: full effective batches of the real size.
    steps = max(steps, TIMING_STEPS)
    indices = np.resize(np.arange(len(images)), steps * model.batch_size)
    labels = np.zeros(len(images), dtype=np.int64)
    batches = Batches(images, labels, indices, model.batch_size, shuffle=True, seed=k)
    torch_precision = resolve_precision(target.precision, torch_device)
    generator = torch.Generator().manual_seed(k)
    runtime = Runtime(torch_device, torch_precision, k, transform, generator)
    # The run's own training step (its loss, mixing, clipping and weight average), every layer
    # trainable: the unfrozen phase is the worst case.
    criterion = Criterion(num_classes, model.label_smoothing, model.mixup, model.cutmix)
    timer = StepTimer(steps)
    learner = Learner(net, batches, runtime, criterion, StepSettings.of(model), callbacks=[timer])
    for group in learner.parts.optimizer.param_groups:
        group["lr"] = model.lr
    learner.fit_epochs(1, name="probe")
    step_seconds = timer.step_seconds()
    # Validation and TTA batches (no gradients, micro-batch sized) are part of a run's peak too.
    plain, augmented = _prediction_seconds(net, images, micro_batch, transform, torch_device, torch_precision,
                                           generator)
    allocated = reserved = retries = None
    if torch_device.type == "cuda":
        allocated = torch.cuda.max_memory_allocated(torch_device)
        reserved = torch.cuda.max_memory_reserved(torch_device)
        retries = torch.cuda.memory_stats(torch_device).get("num_alloc_retries", 0)
    return Trial(k=k, micro_batch=micro_batch, peak_bytes=meter.read(), out_of_memory=False, seconds=0.0,
                 allocated_peak_bytes=allocated, reserved_peak_bytes=reserved, alloc_retries=retries,
                 step_seconds=step_seconds, predict_seconds_per_image=plain, augmented_seconds_per_image=augmented)


def allocator_config() -> str | None:
    """PYTORCH_CUDA_ALLOC_CONF as this process has it: the probe's children inherit it, and a run in
    the same environment uses it, so it is part of the probe's key (what the probe measured under)."""
    return os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or None
