"""What every benchmark shares: the machine it ran on, the competition and spec it measures, and
result writing (one JSON line per benchmark in `results/<name>.jsonl`, and `results/latest.md`).

Imports stay light at module level: `run.py` imports this module, and the memory probe's children
(started with 'spawn') re-run `run.py`'s top level, which must not charge them torch's import time.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
SPEC_PATH = REPO / "experiments" / "fashion.yaml"
DATA_DIR = REPO / "data" / "fashion"  # what `make data` writes; `make bench` depends on it


# ---------------------------------------------------------------- the machine


def _processor_model() -> str:
    from ledger.probe.memory import processor_model  # imported here: this module's top level stays light

    return processor_model()


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _cuda_device() -> str:
    """The first GPU's name, or "none". Asked of nvidia-smi, not torch: torch would create a CUDA
    context in this process, and the memory probe counts device-wide memory, a parent's context too."""
    if shutil.which("nvidia-smi") is None:
        return "none"
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=20, check=True).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "none"
    names = [name.strip() for name in names if name.strip()]
    return names[0] if names else "none"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """The facts a reader needs to compare two results: which machine, how many cores, which libraries."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "node": platform.node(),
        "processor": _processor_model(),
        "cores": cores,
        "ram_bytes": _ram_bytes(),
        "python": platform.python_version(),
        # Versions from the installed metadata: asking does not import torch.
        "torch": _version("torch"),
        "timm": _version("timm"),
        "cuda_device": _cuda_device(),
    }


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load: a busy machine explains noisy timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- what a benchmark measures


@dataclass
class Context:
    """Shared by the benchmarks of one `run.py` call: the options, a scratch folder, the competition,
    and results one benchmark hands to another (the probe's choice, for probe_accuracy)."""

    quick: bool
    device: str  # "cpu" or "cuda"
    workdir: Path
    log: object  # a rich Console
    shared: dict = field(default_factory=dict)
    _competition: Path | None = None

    @property
    def competition_root(self) -> Path:
        """data/fashion when `make data` wrote it; else (and always for --quick, to be fast) a fresh
        competition from the same writer in the scratch folder."""
        if self._competition is None:
            if not self.quick and (DATA_DIR / "solution.csv").is_file():
                self._competition = DATA_DIR
            else:
                from ledger.data.fashion_mnist import write_competition

                root = self.workdir / "competition"
                sizes = dict(train_per_class=60, test=100) if self.quick else {}
                self.log.print(f"writing the competition into {root}" + (" (quick: 600 + 100 images)" if self.quick else ""))
                write_competition(root, seed=0, **sizes)
                self._competition = root
        return self._competition

    def spec(self):
        """experiments/fashion.yaml with data.root pointed at the competition used here."""
        from ledger.spec.loader import load_spec

        spec = load_spec(SPEC_PATH)
        return dataclasses.replace(spec, data=dataclasses.replace(spec.data, root=self.competition_root.resolve()))

    def scratch(self, name: str) -> Path:
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
        return folder


@dataclass
class Result:
    """One benchmark's outcome. `figures` and `rows` (one dict per model, say) go into the JSON line."""

    name: str  # also the file name: results/<name>.jsonl
    summary: str  # the headline, one line
    target: str | None  # the pass/fail target in words, None when there is none
    passes: bool | None  # None when there is no target
    figures: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def record(result: Result, context: Context, seconds: float, machine_facts: dict) -> dict:
    return {
        "benchmark": result.name,
        "summary": result.summary,
        "target": result.target,
        "passes": result.passes,
        "quick": context.quick,
        "device": context.device,
        **result.figures,
        "rows": result.rows,
        "notes": result.notes,
        "benchmark_seconds": round(seconds, 2),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),  # unset: torch's default, one thread per core
        "load_average": load_average(),
        "machine": machine_facts,
        "date": now(),
    }


def append_record(line: dict, results_dir: Path, name: str) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.jsonl"
    with open(path, "a") as out:
        out.write(json.dumps(line) + "\n")
    return path


# ---------------------------------------------------------------- latest.md


def _latest_records(results_dir: Path) -> dict[str, dict]:
    latest = {}
    for path in sorted(results_dir.glob("*.jsonl")):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if lines:
            try:
                latest[path.stem] = json.loads(lines[-1])
            except json.JSONDecodeError:
                continue
    return latest


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value).replace("|", "\\|")


def _table(rows: list[dict]) -> list[str]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def _machine_line(facts: dict) -> str:
    if not facts:
        return "unknown machine"
    ram = facts.get("ram_bytes")
    ram = f", {ram / 1024**3:.0f} GiB RAM" if ram else ""
    cores = facts.get("cores", facts.get("cpu_count"))
    return (f"{facts.get('node')}: {facts.get('processor')} x{cores}{ram}, torch {facts.get('torch')}, "
            f"timm {facts.get('timm', '?')}, CUDA {facts.get('cuda_device', '?')}")


def write_latest(results_dir: Path) -> Path:
    """Rewrite latest.md from the last line of every results/*.jsonl: one summary table, then each
    benchmark's rows."""
    latest = _latest_records(results_dir)
    lines = ["# Benchmarks: the latest result of each", "",
             "Written by `bench/run.py` from the last line of each `bench/results/<name>.jsonl` "
             "(the full history is there). Run with `make bench`.", ""]
    summary = []
    for name, rec in latest.items():
        passes = rec.get("passes")
        summary.append({
            "benchmark": name,
            "result": rec.get("summary") or rec.get("name"),
            "target": rec.get("target") or "",
            "passes": "PASS" if passes else ("FAIL" if passes is False else "-"),
            "quick": rec.get("quick", False),
            "date": rec.get("date"),
        })
    lines += _table(summary) if summary else ["(no results yet)"]
    machines = list(dict.fromkeys(_machine_line(rec.get("machine", {})) for rec in latest.values()))
    if machines:
        lines += ["", ("Machines: " if len(machines) > 1 else "Machine: ") + "; ".join(machines)]
    for name, rec in latest.items():
        lines += ["", f"## {name}", "", f"{rec.get('summary') or rec.get('name')}  ", f"{rec.get('date')}, "
                  f"load average {rec.get('load_average')}, {_machine_line(rec.get('machine', {}))}", ""]
        skip = {"benchmark", "summary", "rows", "notes", "machine", "date", "load_average", "target", "passes"}
        figures = {k: v for k, v in rec.items() if k not in skip}
        if figures:
            lines += _table([figures]) + [""]
        if rec.get("rows"):
            lines += _table(rec["rows"]) + [""]
        for note in rec.get("notes") or []:
            lines.append(f"- {note}")
    path = results_dir / "latest.md"
    results_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
