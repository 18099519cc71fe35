"""Every CUDA claim of ledger, checked on one GPU in about five minutes; one JSON line per check.

    .venv/bin/python bench/gpu_check.py                 # make gpu-check
    .venv/bin/python bench/gpu_check.py --device cuda:1 --results /tmp/out

Checks, each through the real `ledger` commands on a small embedded competition:
- precision_auto: `precision: auto` trains at the card's precision (bf16 from compute capability 8.0,
  else fp16 with the grad scaler), and `fp16` (grad scaler + fused AdamW) trains to a finite loss;
- channels_last: the model's 4-D weights are channels_last on the card;
- probe_vs_run_t4 / probe_vs_run_local: the probe's predicted peak against the trained run's measured
  peak, for a `t4` target (fp16, flash attention off, allocator capped at the T4's capacity) and for
  the local card (a size budget of its own total memory);
- resume: a run stopped (SIGTERM) after its first epoch's checkpoint resumes from it on CUDA;
- device_index: `--device cuda:N` trains on card N;
- predict_tta: `ledger predict` with and without TTA on a run that kept its weights.
Results go to bench/results/gpu.jsonl (or --results DIR). Without CUDA it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TINY_CONVNEXT = {"patch_size": 2, "dims": [16, 32, 64, 128], "depths": [1, 1, 3, 1]}
MARGIN = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Check ledger's CUDA claims on one GPU (about 5 minutes).")
    parser.add_argument("--device", default="cuda:0", help="The card to check, cuda or cuda:N (default cuda:0).")
    parser.add_argument("--results", type=Path, default=RESULTS, help="Folder for gpu.jsonl (default bench/results).")
    parser.add_argument("--work", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    parser.add_argument("--train-per-class", type=int, default=300, help="Training images per class (10 classes).")
    return parser.parse_args(argv)


def _ledger(*args, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "ledger"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ledger.cli"]
    done = subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, **kwargs)
    if check and done.returncode != 0:
        raise RuntimeError(f"ledger {' '.join(map(str, args[:2]))} failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-600:]}")
    return done


def _spec(path: Path, root: Path, epochs: int = 2, budget: str = "t4", precision: str = "auto",
          save_weights: bool = False, accum: str | int = "auto") -> Path:
    import yaml

    path.write_text(yaml.safe_dump(dict(
        name="gpu", data=dict(root=str(root), labels="train.csv"), split=dict(folds=5, seed=0),
        train=dict(batch_size=64, epochs=epochs, lr=0.004, precision=precision, save_weights=save_weights),
        tta=dict(n=2, beta=0.25), probe=dict(budget=budget, steps=3, margin=MARGIN),
        models=[dict(name="convnext", arch="convnext_atto", size=32, runs=1, accum=accum,
                     augment=dict(max_rotate=0, max_warp=0, max_lighting=0), model_kwargs=TINY_CONVNEXT)],
    ), sort_keys=False))
    return path


def _runs(home: Path) -> list[dict]:
    return json.loads(_ledger("runs", "--json", "--home", home).stdout)["runs"]


def check_precision(work: Path, root: Path, device: str, capability: tuple[int, int]) -> dict:
    from ledger.probe.targets import precision_for

    expected = precision_for("auto", capability)
    rows = {}
    for precision in ("auto", "fp16"):
        home = work / f"precision-{precision}"
        spec = _spec(work / f"precision-{precision}.yaml", root, epochs=1, precision=precision, accum=1)
        _ledger("train", spec, "--home", home, "--device", device)
        [rows[precision]] = _runs(home)
    passes = (rows["auto"]["precision"] == expected and rows["fp16"]["precision"] == "fp16"
              and all(r["status"] == "done" and r["valid_loss"] is not None and r["valid_loss"] == r["valid_loss"]
                      for r in rows.values()))
    return dict(check="precision_auto", passes=passes, capability=list(capability), expected_auto=expected,
                auto=rows["auto"]["precision"], fp16_valid_loss=rows["fp16"]["valid_loss"],
                auto_valid_loss=rows["auto"]["valid_loss"])


def check_channels_last(device: str) -> dict:
    import torch

    from ledger.spec.loader import ModelSpec
    from ledger.training.device import model_on_device

    model = ModelSpec(name="m", arch="convnext_atto", size=(32, 32), model_kwargs=TINY_CONVNEXT)
    net, _ = model_on_device(model, 10, torch.device(device))
    weights = [p for p in net.parameters() if p.dim() == 4]
    laid_out = [p.is_contiguous(memory_format=torch.channels_last) for p in weights]
    on_card = all(p.device.type == "cuda" for p in net.parameters())
    return dict(check="channels_last", passes=bool(weights) and all(laid_out) and on_card,
                four_d_weights=len(weights), channels_last=sum(laid_out))


def check_probe_against_run(work: Path, root: Path, device: str, budget: str, name: str) -> dict:
    home = work / name
    spec = _spec(work / f"{name}.yaml", root, epochs=1, budget=budget)
    [probe] = json.loads(_ledger("probe-memory", spec, "--json", "--home", home, "--device", device).stdout)
    _ledger("train", spec, "--home", home, "--device", device)
    [row] = _runs(home)
    chosen = next(t for t in probe["trials"] if t["k"] == probe["chosen_k"])
    relative = (row["peak_bytes"] - chosen["peak_bytes"]) / chosen["peak_bytes"]
    return dict(check=name, passes=row["predicted_peak_bytes"] == chosen["peak_bytes"] and relative <= MARGIN,
                target=probe["target"], capacity_bytes=probe["capacity_bytes"], precision=probe["precision"],
                run_precision=row["precision"], chosen_k=probe["chosen_k"], predicted_peak_bytes=chosen["peak_bytes"],
                measured_peak_bytes=row["peak_bytes"], relative=round(relative, 4),
                allocated_peak_bytes=chosen["allocated_peak_bytes"], reserved_peak_bytes=chosen["reserved_peak_bytes"],
                alloc_retries=chosen["alloc_retries"], peak_vs_prediction=row["peak_vs_prediction"])


def check_resume(work: Path, root: Path, device: str) -> dict:
    home = work / "resume"
    spec = _spec(work / "resume.yaml", root, epochs=12, accum=1)  # long enough to stop after the first epoch
    script = Path(sys.executable).parent / "ledger"
    process = subprocess.Popen([str(script), "train", str(spec), "--home", str(home), "--device", device],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(home.glob("gpu/*.partial/checkpoint.pt")):
        time.sleep(0.2)
    checkpointed = bool(list(home.glob("gpu/*.partial/checkpoint.pt")))
    process.send_signal(signal.SIGTERM)  # handled as Ctrl-C: the run is recorded interrupted
    process.wait(timeout=60)
    _ledger("train", spec, "--home", home, "--device", device)
    [row] = _runs(home)
    return dict(check="resume", passes=checkpointed and row["status"] == "done" and (row["resumed_epochs"] or 0) >= 1,
                checkpointed=checkpointed, resumed_epochs=row["resumed_epochs"], status=row["status"])


def check_device_index(work: Path, root: Path, device: str) -> dict:
    import torch

    index = torch.device(device).index or 0
    home = work / "index"
    spec = _spec(work / "index.yaml", root, epochs=1, accum=1)
    _ledger("train", spec, "--home", home, "--device", f"cuda:{index}")
    [row] = _runs(home)
    expected = f"cuda: {torch.cuda.get_device_name(index)}"
    return dict(check="device_index", passes=row["status"] == "done" and row["device"] == expected,
                device=row["device"], index=index)


def check_predict(work: Path, root: Path, device: str) -> dict:
    import pandas as pd

    home = work / "predict"
    spec = _spec(work / "predict.yaml", root, epochs=1, accum=1, save_weights=True)
    _ledger("train", spec, "--home", home, "--device", device)
    [row] = _runs(home)
    images = root / "test_images"
    counts = {}
    for flag in ("--tta", "--no-tta"):
        out = work / f"predict{flag}.csv"
        _ledger("predict", row["id"], images, "--out", out, flag, "--home", home, "--device", device)
        counts[flag] = len(pd.read_csv(out))
    expected = len(list(images.iterdir()))
    return dict(check="predict_tta", passes=counts == {"--tta": expected, "--no-tta": expected}, images=expected)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: skipped, no CUDA device on this machine")
        return 0
    device = torch.device(args.device)
    index = device.index or 0
    if device.type != "cuda" or index >= torch.cuda.device_count():
        print(f"gpu-check: --device {args.device}: expected cuda or cuda:N of {torch.cuda.device_count()} card(s)")
        return 2
    capability = torch.cuda.get_device_capability(index)
    local_total = torch.cuda.get_device_properties(index).total_memory
    # This process must not hold a CUDA context while the probe measures the card: it is device-wide.
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    root = work / "fashion"
    if not (root / "train.csv").exists():
        _ledger("data", "fashion-mnist", root, "--train-per-class", args.train_per_class, "--test", 500, "--force")
    checks = [
        ("probe_vs_run_t4", lambda: check_probe_against_run(work, root, args.device, "t4", "probe_vs_run_t4")),
        ("probe_vs_run_local", lambda: check_probe_against_run(work, root, args.device, str(local_total),
                                                               "probe_vs_run_local")),
        ("precision_auto", lambda: check_precision(work, root, args.device, capability)),
        ("resume", lambda: check_resume(work, root, args.device)),
        ("device_index", lambda: check_device_index(work, root, args.device)),
        ("predict_tta", lambda: check_predict(work, root, args.device)),
        ("channels_last", lambda: check_channels_last(args.device)),  # last: it creates a context here
    ]
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    card = torch.cuda.get_device_name(index)
    failed = 0
    with open(args.results / "gpu.jsonl", "a") as results:
        for name, check in checks:
            started = time.perf_counter()
            try:
                row = check()
            except Exception as error:  # noqa: BLE001 - one failed check does not stop the others
                row = dict(check=name, passes=False, error=f"{type(error).__name__}: {error}"[:800])
            row |= dict(seconds=round(time.perf_counter() - started, 1), card=card, torch=torch.__version__,
                        at=stamp, pytorch_cuda_alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"))
            results.write(json.dumps(row) + "\n")
            results.flush()
            failed += not row["passes"]
            print(f"{'pass' if row['passes'] else 'FAIL'}  {name}  {row['seconds']}s  "
                  f"{ {k: v for k, v in row.items() if k not in ('check', 'passes', 'at', 'torch', 'card')} }",
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
