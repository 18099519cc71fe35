"""Memory sizes in text and in bytes: pure, torch-free, so the command line and the spec can use them."""

import re

_UNITS = {
    "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
UNIT_NAMES = tuple(_UNITS)  # what a size may end with, in any case (the spec's JSON Schema lists them)
_SIZE_PATTERN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'16GiB', '15.9GB', '800MiB', '512 MB', '1000' -> bytes.

    KB/MB/GB/TB are powers of 1000 and KiB/MiB/GiB/TiB powers of 1024, as vendors and `free` use them,
    so that '16GB' and '16GiB' never silently mean the same thing. A plain integer (YAML `budget: 1000`)
    is taken as bytes.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"a memory size cannot be negative: {text}")
        return text
    match = _SIZE_PATTERN.fullmatch(text) if isinstance(text, str) else None
    unit = match.group(2).lower() if match else None
    if match is None or (unit and unit not in _UNITS):
        raise ValueError(
            f"not a memory size: {text!r} (expected a number and a unit, e.g. 16GiB, 15.9GB, 800MiB; "
            f"units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
        )
    return round(float(match.group(1)) * _UNITS[unit or "b"])


def format_size(n: int) -> str:
    """Bytes -> '17.2 GiB', '812.0 MiB', '512 B' (binary units: the ones GPU tools report)."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = _UNITS[unit.lower()]
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
