"""What a probe answers for: its setting (the target card or size, the margin, the target's compute
capability, the library versions and allocator settings, the threads a run gets) and its key, so a
probe measured for one setting never answers for another."""

from __future__ import annotations

from dataclasses import dataclass

@dataclass(frozen=True)
class ProbeSetting:
    """What a probe answers for besides the model: the budget (a target card or a size), the margin,
    the probing device's capability (None on a CPU) and the library versions it measured with."""

    budget: object  # ledger.probe.targets.Budget
    margin: float
    local_capability: tuple[int, int] | None
    versions: dict
    # On a CPU, for runs trained side by side (`train --jobs N`): the cores each gets. A run's speed
    # and peak depend on it (oneDNN picks kernels and scratch space by thread count), so the probe
    # trains with it. None: the process's own, as one run at a time has.
    cpu_threads: int | None = None

    @property
    def capability(self) -> tuple[int, int] | None:
        """The target's, or with a bare size the probing device's: it decides precision and kernels."""
        return self.budget.target.capability if self.budget.target is not None else self.local_capability

    def precision(self, model) -> str:
        from ledger.probe.targets import precision_for

        return precision_for(model.precision, self.capability)


def probe_environment() -> dict:
    """torch's and cuDNN's versions and the allocator settings: a probe measured with others does not
    answer for this process."""
    import torch

    from ledger.probe.trial import allocator_config

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return dict(torch=torch.__version__, cudnn=cudnn, alloc_conf=allocator_config())


def probe_setting(spec, device, budget=None, jobs: int = 1) -> ProbeSetting:
    """The setting of a probe on `device` (torch.device) for the spec's budget, or `budget` (a Budget),
    for runs trained `jobs` at a time (`train --jobs`, CPU only)."""
    import torch

    from ledger.training.device import threads_per_job

    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    threads = threads_per_job(jobs) if device.type == "cpu" and jobs > 1 else None
    return ProbeSetting(budget or spec.probe.target, spec.probe.margin, capability, probe_environment(), threads)


def probe_key(model, setting: ProbeSetting) -> str:
    """What a probe's answer depends on, besides device, budget and margin (their own columns): the
    model, its input (size, presize, resize) and batch, the target and the precision it resolves to,
    and the versions it ran with; a weight average (`ema`, one more copy of the weights) when it is
    on, and a CPU run's share of the cores under `--jobs`, so keys of runs without them are as they
    were. A probe of one key never answers for another."""
    import json

    averaged = {"ema": model.ema} if model.ema else {}
    threads = {"cpu_threads": setting.cpu_threads} if setting.cpu_threads else {}
    return json.dumps(dict(arch=model.arch, size=list(model.size), presize=model.presize and list(model.presize),
                           resize=model.resize, model_kwargs=model.model_kwargs, batch_size=model.batch_size,
                           target=setting.budget.target_name, precision=setting.precision(model),
                           **averaged, **threads, **setting.versions), sort_keys=True)
