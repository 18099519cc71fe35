"""Tuned weights against hidden labels: one greedy pass on the held-out images, the mean of passes on
bootstrap resamples of them, and equal weights, each bag scored on the competition's solution.

    python bench/tuned_weights.py SOLUTION_CSV RUN_FOLDER [RUN_FOLDER ...] [--resamples 20 100]

Each RUN_FOLDER is a finished run's artifact folder (valid_preds.npz, test_preds.npz, summary.json);
its entry is the summary's model name. Prints one line per weighting: the weights and the hidden
accuracy of the bag they make (the TTA'd test predictions, mean per entry, weighted).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from ledger.bag.ensemble import RunInput, bag, normalise_weights
from ledger.bag.out_of_bag import held_out, tune_weights
from ledger.runs.artifacts import load_predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("solution", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--resamples", type=int, nargs="+", default=[20, 100])
    args = parser.parse_args()
    entries = [json.loads((run / "summary.json").read_text())["model"] for run in args.runs]
    runs = [RunInput(run.name, entry, load_predictions(run / "test_preds.npz"), load_predictions(run / "valid_preds.npz"))
            for run, entry in zip(args.runs, entries)]
    vocab = sorted(str(v) for v in runs[0].test.vocab)
    held = held_out([(r.run_id, r.model, r.valid) for r in runs], vocab)
    solution = pd.read_csv(args.solution)
    ids, truth = solution.iloc[:, 0].astype(str).to_numpy(), solution.iloc[:, 1].astype(str).to_numpy()

    def hidden(weights: dict[str, float]) -> float:
        """The hidden accuracy of the bag `ledger ensemble` makes with these entry weights."""
        return float((bag(runs, normalise_weights(runs, weights), ids).labels == truth).mean())

    for resamples in [0, *args.resamples]:
        tuned = tune_weights(held, resamples=resamples)
        label = "one pass" if resamples == 0 else f"{resamples} resamples"
        print(f"{label:>14}: {tuned.weights}  hidden {hidden(tuned.weights):.4f}")
    equal = {e: 1.0 for e in held.entries}
    print(f"{'equal':>14}: {equal}  hidden {hidden(equal):.4f}")


if __name__ == "__main__":
    main()
