"""Time `ledger ensemble`'s core on a realistic size: 100 runs x 3,469 test images x 10 classes.

The runs are saved as npz files, as real run folders hold them, then timed end to end:
load (artifacts.load_predictions) + bag + write_submission. The target is well under 1 s.
The sample submission lists ids without extension in an order of its own, while the runs keep
"<id>.png" in data-layer order and some list their classes shuffled, so the timed path includes
the extension fallback and the column reordering.

    .venv/bin/python bench/bench_ensemble.py [--out bench/results/ensemble.jsonl]

`bench/run.py` runs it with the other benchmarks (`--only ensemble`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import Context, Result, machine, now
from ledger.runs.artifacts import TEST_PREDS, Predictions, load_predictions, save_predictions
from ledger.bag.ensemble import RunInput, bag, normalise_weights
from ledger.bag.submission_csv import write_submission

RUNS, IMAGES, CLASSES = 100, 3469, 10
TARGET_SECONDS = 1.0


def build(folder: Path, seed: int = 0) -> tuple[list[Path], Path]:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"class_{c}" for c in range(CLASSES)])
    ids = np.array([f"{200001 + i}.png" for i in range(IMAGES)])
    paths = []
    for r in range(RUNS):
        columns = rng.permutation(CLASSES) if r % 10 == 0 else np.arange(CLASSES)
        probs = rng.dirichlet(np.ones(CLASSES), size=IMAGES).astype(np.float32)
        path = folder / f"run{r:03d}" / TEST_PREDS
        path.parent.mkdir()
        save_predictions(path, Predictions(ids=ids, probs=probs[:, columns], vocab=vocab[columns]))
        paths.append(path)
    sample = folder / "sample_submission.csv"
    sample_ids = [name.removesuffix(".png") for name in rng.permutation(ids)]
    pd.DataFrame({"image_id": sample_ids, "label": ""}).to_csv(sample, index=False)
    return paths, sample


def measure() -> dict:
    """Build the runs in a scratch folder, then time load + bag + write."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths, sample = build(folder)

        start = time.perf_counter()
        runs = [
            RunInput(run_id=path.parent.name, model=f"model{i % 4}", test=load_predictions(path), valid=None)
            for i, path in enumerate(paths)
        ]
        loaded = time.perf_counter()
        weights = normalise_weights(runs, {"model0": 2.0})
        sample_ids = pd.read_csv(sample, dtype=str, keep_default_na=False)["image_id"]
        result = bag(runs, weights, sample_ids)
        frame = write_submission(sample, result, folder / "submission.csv")
        done = time.perf_counter()
        assert len(frame) == IMAGES and list(frame["image_id"]) == list(sample_ids)

    return {
        "name": f"ensemble {RUNS} runs x {IMAGES} x {CLASSES}",
        "seconds_load": round(loaded - start, 4),
        "seconds_bag_write": round(done - loaded, 4),
        "seconds_total": round(done - start, 4),
        "passes": done - start < TARGET_SECONDS,
    }


def run(context: Context) -> Result:
    """For bench/run.py: the same measurement as a Result."""
    figures = measure()
    return Result(
        name="ensemble",
        summary=f"{figures['name']}: {figures['seconds_total']:.3f} s (load {figures['seconds_load']:.3f} s, "
                f"bag + write {figures['seconds_bag_write']:.3f} s)",
        target=f"total < {TARGET_SECONDS:g} s",
        passes=figures.pop("passes"),
        figures=figures,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ensemble.jsonl")
    args = parser.parse_args()

    record = measure() | {"machine": machine(), "date": now()}
    line = json.dumps(record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(line + "\n")
    print(line)
    sys.exit(0 if record["passes"] else 1)


if __name__ == "__main__":
    main()
