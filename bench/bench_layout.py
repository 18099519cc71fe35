"""Memory layout on this device: contiguous (NCHW) against channels_last (NHWC), per architecture.

    .venv/bin/python bench/bench_layout.py            # a few minutes on 2 CPU cores
    .venv/bin/python bench/bench_layout.py --quick    # smoke run, not recorded

The evidence for channels_last in `train.model_on_device`: each case times a training step (forward, backward,
AdamW step) and an inference batch of the same network in both layouts, interleaved round by round so
a busy machine disturbs both alike; the figure is the median of the rounds, in images per second.
Appends one JSON line to bench/results/layout.jsonl.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, append_record, load_average, machine, now  # noqa: E402

# (label, timm arch, image size, kwargs): the embedded spec's two members, and one of each family.
CASES = [
    ("lite0 (embedded spec)", "tf_efficientnet_lite0", 48, {}),
    ("lite0", "tf_efficientnet_lite0", 128, {}),
    ("convnext (embedded spec)", "convnext_atto", 32, dict(patch_size=2, dims=[16, 32, 64, 128], depths=[1, 1, 3, 1])),
    ("convnext_atto", "convnext_atto", 128, {}),
    ("resnet18", "resnet18", 64, {}),
    ("vit_tiny", "vit_tiny_patch16_224", 64, dict(img_size=64)),
    ("swin_tiny", "swin_tiny_patch4_window7_224", 56, dict(img_size=56)),
]


def _nets(arch: str, kwargs: dict, device: torch.device):
    import timm

    nets = {}
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        net = timm.create_model(arch, num_classes=10, **kwargs).to(device).to(memory_format=layout)
        nets[layout] = (net, torch.optim.AdamW(net.parameters(), lr=1e-3))
    return nets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(net, optimizer, x, y, device) -> float:
    started = time.perf_counter()
    net.train()
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    optimizer.step()
    _sync(device)
    return time.perf_counter() - started


@torch.no_grad()
def _eval_batch(net, x, device) -> float:
    started = time.perf_counter()
    net.eval()
    net(x)
    _sync(device)
    return time.perf_counter() - started


def measure(arch: str, size: int, kwargs: dict, batch: int, rounds: int, device: torch.device) -> dict:
    nets = _nets(arch, kwargs, device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
    inputs = {layout: images.contiguous(memory_format=layout) for layout in nets}
    train = {layout: [] for layout in nets}
    infer = {layout: [] for layout in nets}
    for round_ in range(rounds + 1):  # the first round warms up (oneDNN picks its kernels) and is dropped
        for layout, (net, optimizer) in nets.items():
            step = _train_step(net, optimizer, inputs[layout], labels, device)
            batch_s = _eval_batch(net, inputs[layout], device)
            if round_:
                train[layout].append(step)
                infer[layout].append(batch_s)
    contiguous, channels_last = torch.contiguous_format, torch.channels_last
    rate = lambda times: batch / statistics.median(times)  # noqa: E731
    return {
        "arch": arch, "size": size, "batch": batch,
        "train_img_s_contiguous": round(rate(train[contiguous]), 1),
        "train_img_s_channels_last": round(rate(train[channels_last]), 1),
        "train_speedup": round(rate(train[channels_last]) / rate(train[contiguous]), 2),
        "predict_img_s_contiguous": round(rate(infer[contiguous]), 1),
        "predict_img_s_channels_last": round(rate(infer[channels_last]), 1),
        "predict_speedup": round(rate(infer[channels_last]) / rate(infer[contiguous]), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="two cases, two rounds, batch 16; not recorded")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cases = CASES[:1] + CASES[2:3] if args.quick else CASES
    if args.quick:
        args.rounds, args.batch = 2, 16
    rows = []
    for label, arch, size, kwargs in cases:
        row = {"case": label, **measure(arch, size, kwargs, args.batch, args.rounds, device)}
        rows.append(row)
        print(f"{label:26s} {size:4d} px  train x{row['train_speedup']:.2f}  predict x{row['predict_speedup']:.2f}", flush=True)
    # ledger trains every network channels_last: that holds while no case is more than 10% slower so.
    wrong = [r["case"] for r in rows if min(r["train_speedup"], r["predict_speedup"]) < 0.9]
    record = {
        "benchmark": "layout",
        "summary": "channels_last / contiguous training speed: "
                   + ", ".join(f"{r['case']} x{r['train_speedup']}" for r in rows),
        "target": "channels_last trains and predicts no more than 10% slower than contiguous, for every case",
        "passes": not wrong,
        "slower_cases": wrong,
        "quick": args.quick,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "rows": rows,
        "load_average": load_average(),
        "machine": machine(),
        "date": now(),
    }
    print(record["summary"])
    print(f"target: {record['target']}: {'PASS' if record['passes'] else 'FAIL ' + str(wrong)}")
    if not args.quick:
        print(f"recorded in {append_record(record, RESULTS_DIR, 'layout')}")
    return 0 if record["passes"] else 1


if __name__ == "__main__":
    sys.exit(main())
