"""Target cards: the GPU a probe answers for, and the pure rules that follow from it.

A probe run on a big card must answer for the small one the user will train on (Kaggle's T4, 16 GB
on the label). What matters is what torch sees on that card: `total_memory` (cudaGetDeviceProperties'
totalGlobalMem, less than the label: ECC and the driver's reservations come out of it) and the compute
capability, which decides `precision: auto` (bf16 only from 8.0, Ampere) and the attention kernels
(flash SDPA only from 8.0). Everything here is torch-free and pure: the probe and training call it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.units import parse_size

MiB = 1024**2


@dataclass(frozen=True)
class Target:
    name: str  # what a spec or --budget says: t4, a100-80, ...
    card: str  # the name torch.cuda.get_device_name() reports
    total_memory: int  # bytes, as torch.cuda.get_device_properties().total_memory reports them
    capability: tuple[int, int]  # CUDA compute capability (major, minor)


# Each figure is the card's totalGlobalMem as the CUDA runtime reports it (deviceQuery's "Total amount
# of global memory", cudaGetDeviceProperties, torch's total_memory: one number), in published output
# found by searching public GitHub text for it. The figure moves a little with the driver and with ECC
# (T4: 15,095 MiB with ECC on, as on Kaggle and Colab; 15,110 MiB on an older driver): where sources
# differ, the smaller figure is kept, so a probe never promises memory the card may not have.
TARGETS: dict[str, Target] = {target.name: target for target in (
    # "Tesla T4 ... Total Global Memory (bytes): 15828320256 ... ECC Enabled: Yes" (a cudaGetDeviceProperties
    # listing); the same figure as `vram_total` of a T4 in ComfyUI's system_stats. 15,095 MiB; deviceQuery
    # on driver 11.0 reported 15110 MBytes (15843721216 bytes).
    Target("t4", "Tesla T4", 15_828_320_256, (7, 5)),
    # deviceQuery, "Tesla P100-PCIE-16GB": 16281 MBytes (17071734784 bytes); NVML reports the same total.
    Target("p100", "Tesla P100-PCIE-16GB", 17_071_734_784, (6, 0)),
    # deviceQuery, "Tesla V100-SXM2-16GB": 16160 MBytes (16945512448 bytes); V100-PCIE-16GB the same.
    Target("v100-16", "Tesla V100-SXM2-16GB", 16_945_512_448, (7, 0)),
    # deviceQuery, "Tesla V100-PCIE-32GB": 32510 MBytes (34089730048 bytes); matrixMulDrv on a
    # V100-SXM2-32GB prints the same bytes, and so does DeepSpeed's total_memory() on a 32 GB V100.
    Target("v100-32", "Tesla V100-SXM2-32GB", 34_089_730_048, (7, 0)),
    # No A10G deviceQuery was found; this is an NVIDIA A10's (aalanwyr/face2cuda, step2cuda/README.md:
    # "21.99 GBytes (23609475072 bytes)"), the same GA102 board with 24 GB GDDR6 that AWS sells as A10G,
    # whose nvidia-smi total (23,028 MiB) matches the A10's (modal-labs/modal-client PR 2797).
    Target("a10g", "NVIDIA A10G", 23_609_475_072, (8, 6)),
    # deviceQuery, "NVIDIA L4", driver 12.0: 22518 MBytes (23612293120 bytes).
    Target("l4", "NVIDIA L4", 23_612_293_120, (8, 9)),
    # deviceQuery, "NVIDIA A100-SXM4-40GB", driver 12.2: 40339 MBytes (42298834944 bytes)
    # (bottlerocket-os/bottlerocket PR 3873).
    Target("a100-40", "NVIDIA A100-SXM4-40GB", 42_298_834_944, (8, 0)),
    # deviceQuery, "NVIDIA A100-SXM4-80GB", driver 12.2: 81051 MBytes (84987740160 bytes); 81158 MBytes
    # (85100068864 bytes) on driver 12.5.
    Target("a100-80", "NVIDIA A100-SXM4-80GB", 84_987_740_160, (8, 0)),
    # deviceQuery, "NVIDIA H100 80GB HBM3", driver 13.0: 81079 MBytes (85017755648 bytes); 81090 and
    # 81106 MBytes on drivers 12.8 and 12.7.
    Target("h100-80", "NVIDIA H100 80GB HBM3", 85_017_755_648, (9, 0)),
    # deviceQuery, "NVIDIA GeForce RTX 3090", driver 11.8: 24268 MBytes (25447170048 bytes).
    Target("rtx3090", "NVIDIA GeForce RTX 3090", 25_447_170_048, (8, 6)),
    # deviceQuery, "NVIDIA GeForce RTX 4090", driver 12.1: 24564 MBytes (25756696576 bytes).
    Target("rtx4090", "NVIDIA GeForce RTX 4090", 25_756_696_576, (8, 9)),
)}


@dataclass(frozen=True)
class Budget:
    """What a probe budget names: a card (capacity and capability) or a bare size (no capability)."""

    text: str
    capacity_bytes: int
    target: Target | None  # None for a size: precision and kernels are then the local device's

    @property
    def target_name(self) -> str | None:
        return None if self.target is None else self.target.name


def parse_budget(text: str | int) -> Budget:
    """'t4' -> the T4's total_memory and capability; '16GiB' or 1000 (bytes) -> a size, as before."""
    if isinstance(text, str) and text.strip() and not text.strip()[0].isdigit() and text.strip()[0] != ".":
        name = text.strip().lower().replace("_", "-")
        if name not in TARGETS:
            raise ValueError(f"not a target card or a memory size: {text!r} (cards: {', '.join(TARGETS)}; "
                             f"or a size such as 16GiB, 15.9GB, 800MiB)")
        target = TARGETS[name]
        return Budget(str(text), target.total_memory, target)
    size = parse_size(text)
    if size <= 0:  # nothing fits in no memory: every probe would report "nothing fits"
        raise ValueError(f"a budget of {text!r} holds nothing; give a card or a size above 0, such as 16GiB")
    return Budget(str(text), size, None)


def precision_for(requested: str, capability: tuple[int, int] | None) -> str:
    """`precision: auto` by compute capability: bf16 where the card runs it natively (8.0, Ampere, and
    later), else fp16 with a gradient scaler (T4, P100 and V100 only emulate bf16, slowly); fp32 where
    there is no capability (a CPU). A precision the spec names is kept as it is."""
    if requested != "auto":
        return requested
    if capability is None:
        return "fp32"
    return "bf16" if tuple(capability) >= (8, 0) else "fp16"


def sdpa_kernels(capability: tuple[int, int] | None) -> dict[str, bool]:
    """Which scaled-dot-product-attention kernels the target runs: flash attention needs 8.0 or later,
    so a probe for a T4 on an H100 turns it off and measures the memory-efficient kernel the T4 will
    use. With no capability (a size budget, a CPU) nothing is turned off."""
    flash = capability is None or tuple(capability) >= (8, 0)
    return {"flash": flash, "mem_efficient": True, "math": True}


def memory_fraction(capacity_bytes: int, context_bytes: int, local_total_bytes: int) -> float:
    """The fraction for torch.cuda.set_per_process_memory_fraction that leaves the caching allocator
    what the target card would leave it: its capacity less the CUDA context (measured here, on the
    probing card). The allocator then frees its cache and retries before failing, as it would on the
    target. A target at least as big as the local card is not capped (1.0)."""
    if local_total_bytes <= 0:
        raise ValueError(f"the local card's total memory must be positive, got {local_total_bytes}")
    allowed = capacity_bytes - context_bytes
    if allowed <= 0:
        raise ValueError(f"the CUDA context ({context_bytes} bytes) leaves nothing of the target's "
                         f"{capacity_bytes} bytes")
    return min(1.0, allowed / local_total_bytes)


@dataclass(frozen=True)
class PeakCheck:
    predicted_bytes: int
    measured_bytes: int
    margin: float

    @property
    def relative(self) -> float:
        """How far the measured peak is above (+) or below (-) the prediction, as a fraction of it."""
        return (self.measured_bytes - self.predicted_bytes) / self.predicted_bytes

    @property
    def exceeds(self) -> bool:
        """Over the prediction by more than the margin the probe left for what it does not see: the
        run came closer to the budget than the probe promised (1e-9: a float tie is not a warning)."""
        return self.relative > self.margin + 1e-9

    def describe(self) -> str:
        word = "over" if self.relative >= 0 else "under"
        text = f"{abs(self.relative):.1%} {word} the probe's prediction"
        return text + (f", more than the {self.margin:.0%} margin" if self.exceeds else "")


def check_peak(predicted_bytes: int | None, measured_bytes: int | None, margin: float) -> PeakCheck | None:
    """The probe's predicted peak against a run's measured one; None when either is unknown."""
    if not predicted_bytes or measured_bytes is None:
        return None
    return PeakCheck(predicted_bytes, measured_bytes, margin)
