"""One bag, one answer per image: `ledger predict SPEC` bags the runs `ledger ensemble` bags, with the
same --run, --weight and --use-tuned, and TTA keys each image's draws to the image, so an image gets the
same probabilities alone, in any folder, and in the ensemble's submission."""

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_CONVNEXT, write_spec
from typer.testing import CliRunner

from ledger.cli import app
from ledger.data.augment import N_DRAWS, keyed_draws
from ledger.runs import artifacts

pytestmark = pytest.mark.slow  # trains or builds end to end: `make test-quick` leaves it out

runner = CliRunner()

MODELS = "".join(
    f"  - {{name: {name}, arch: convnext_atto, size: 32, runs: 2, accum: 1, save_weights: true, lr: {lr},"
    f" model_kwargs: {json.dumps(TINY_CONVNEXT)}}}\n" for name, lr in (("a", 0.002), ("b", 0.004)))


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_keyed_draws_hash_the_seed_the_stream_and_the_key_alone():
    draws = keyed_draws(7, ["x.png", "y.png", "z.png"], stream=1)
    assert draws.shape == (3, N_DRAWS) and draws.dtype == torch.float64
    assert bool(((draws >= 0) & (draws < 1)).all())
    # Worked by hand: the first number is the top 53 bits of BLAKE2b's first little-endian word.
    digest = hashlib.blake2b(b"7\x001\x000\x00y.png", digest_size=64).digest()
    assert draws[1, 0].item() == (int.from_bytes(digest[:8], "little") >> 11) / 2**53
    # An image's draws do not depend on its neighbours, and change with the seed, the stream and the key.
    torch.testing.assert_close(keyed_draws(7, ["y.png"], stream=1)[0], draws[1], rtol=0, atol=0)
    for other in (keyed_draws(8, ["y.png"], 1), keyed_draws(7, ["y.png"], 2), keyed_draws(7, ["w.png"], 1)):
        assert not torch.equal(other[0], draws[1])


@pytest.fixture(scope="module")
def bagged(tmp_path_factory, tiny_competition):
    folder = tmp_path_factory.mktemp("bag")
    home = folder / "home"
    spec = write_spec(folder / "tiny.yaml", tiny_competition, MODELS, extra="split: {folds: 2, seed: 0}\n")
    result = invoke("train", spec, "--home", home, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return dict(home=home, spec=spec, folder=folder, images=tiny_competition / "test_images",
                competition=tiny_competition)


def _probs(path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"id": str, "label": str})
    return frame.set_index("id")


def test_predict_with_use_tuned_bags_the_runs_and_weights_ensemble_bags(bagged):
    home, spec = bagged["home"], bagged["spec"]
    ensembled = invoke("ensemble", spec, "--home", home, "--use-tuned", "--dry-run", "--json")
    assert ensembled.exit_code == 0, ensembled.output
    weights = json.loads(ensembled.stdout)["weights"]
    out = bagged["folder"] / "predicted.csv"
    result = invoke("predict", spec, bagged["images"], "--out", out, "--home", home, "--use-tuned")
    assert result.exit_code == 0, result.output
    printed = " ".join(result.stdout.split())
    assert all(f"{run_id} ({weight:.3f})" in printed for run_id, weight in weights.items())

    # The ensemble's bag, from the runs' own TTA'd test predictions, with the tuned weights.
    predicted = _probs(out)
    total = None
    for run_id, weight in weights.items():
        row = next(r for r in json.loads(invoke("runs", "--home", home, "--json").stdout)["runs"] if r["id"] == run_id)
        preds = artifacts.load_predictions(home / row["artifact_dir"] / artifacts.TEST_PREDS)
        frame = pd.DataFrame(preds.probs, columns=preds.vocab, index=[str(i) for i in preds.ids]) * weight
        total = frame if total is None else total + frame.loc[frame.index]
    names = [i if i in predicted.index else next(p for p in predicted.index if p.rsplit(".", 1)[0] == i)
             for i in total.index]
    got = predicted.loc[names, list(total.columns)].to_numpy()
    np.testing.assert_allclose(got, total.to_numpy() / sum(weights.values()), atol=1e-5)

    written = bagged["folder"] / "submission.csv"
    assert invoke("ensemble", spec, "--home", home, "--use-tuned", "--out", written).exit_code == 0
    labels = pd.read_csv(written, dtype=str)
    agree = np.mean(labels.iloc[:, 1].to_numpy() == predicted.loc[names, "label"].to_numpy())
    assert agree >= 0.999


def test_an_image_gets_one_answer_alone_in_another_folder_and_in_its_own(bagged):
    home, spec = bagged["home"], bagged["spec"]
    whole = bagged["folder"] / "whole.csv"
    assert invoke("predict", spec, bagged["images"], "--out", whole, "--home", home).exit_code == 0
    images = sorted(bagged["images"].iterdir())
    # Every other image, so each batch holds other neighbours than in the whole folder.
    subset = bagged["folder"] / "subset"
    subset.mkdir()
    for path in images[1::2]:
        shutil.copy(path, subset / path.name)
    part = bagged["folder"] / "part.csv"
    assert invoke("predict", spec, subset, "--out", part, "--home", home).exit_code == 0
    alone = bagged["folder"] / "alone.csv"
    assert invoke("predict", spec, images[3], "--out", alone, "--home", home).exit_code == 0
    whole_probs, part_probs, alone_probs = _probs(whole), _probs(part), _probs(alone)
    columns = [c for c in whole_probs.columns if c != "label"]
    np.testing.assert_allclose(part_probs[columns].to_numpy(), whole_probs.loc[part_probs.index, columns].to_numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(alone_probs[columns].to_numpy(), whole_probs.loc[[images[3].name], columns].to_numpy(),
                               atol=1e-5)


def test_bag_options_on_a_run_id_are_refused_in_one_line(bagged):
    rows = json.loads(invoke("runs", "--home", bagged["home"], "--json").stdout)["runs"]
    result = invoke("predict", rows[0]["id"], bagged["images"], "--out", bagged["folder"] / "x.csv",
                    "--home", bagged["home"], "--use-tuned")
    assert result.exit_code != 0 and "give a spec, not a run id" in result.output
    assert len(result.output.strip().splitlines()) == 1
