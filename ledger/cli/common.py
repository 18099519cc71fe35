"""What every command shares: the Typer app, the options written once, the consoles, and
`friendly_errors` (a `LedgerError` prints as one line on stderr with a non-zero exit and no
traceback). The commands live in their own modules, which import from here (never from the
package), so the package imports them and nothing imports back."""

from __future__ import annotations

import functools
import inspect
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ledger import __version__
from ledger.errors import LedgerError, SpecError

# `--help` lists the commands in the order of a competitor's week, not in registration order
# (Typer puts every group after every command).
WORKFLOW = ("data", "check", "schema", "probe-memory", "lr-find", "train", "ensemble", "export", "predict", "report", "runs",
            "submissions", "submit", "score")


class WorkflowOrder(typer.core.TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: WORKFLOW.index(name) if name in WORKFLOW else len(WORKFLOW))


app = typer.Typer(
    cls=WorkflowOrder,
    help="Experiment runner for Kaggle-style image classification: probe memory, train timm models with TTA, "
    "bag them into a submission, and keep a ledger of every run.\n\n"
    "Example: ledger data fashion-mnist data/fashion && ledger train experiments/fashion.yaml",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
)
data_app = typer.Typer(help="Write an embedded competition folder.\n\nExample: ledger data fashion-mnist data/fashion",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(highlight=False, soft_wrap=True)  # never fold lines in logs
err_console = Console(stderr=True, highlight=False)

# Options shared by several commands, written once.
SpecArg = Annotated[Path, typer.Argument(help="Experiment spec (YAML).", show_default=False)]
HomeOpt = Annotated[Optional[Path], typer.Option("--home", help="Ledger folder (default: $LEDGER_HOME or ./runs).")]
ModelOpt = Annotated[Optional[list[str]], typer.Option("--model", help="Only this model entry (repeatable).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda or cuda:N (default: the first GPU, else CPU).")]
# How a bag is chosen and weighed: the same options on ensemble, predict SPEC and export (BagOptions).
RunsOpt = Annotated[Optional[list[str]], typer.Option(
    "--run", "--runs", help="Bag exactly this run (id or unique id prefix; repeatable).")]
WeightOpt = Annotated[Optional[list[str]], typer.Option(
    "--weight", help="NAME=W: weight of a model entry, overriding the spec (repeatable).")]
UseTunedOpt = Annotated[bool, typer.Option(
    "--use-tuned", help="Bag with the greedy out-of-bag weights instead of the spec's.")]
StepsOpt = Annotated[int, typer.Option(min=1, max=1000, help="Greedy selection steps for the tuned weights.")]
ResamplesOpt = Annotated[int, typer.Option(min=0, max=1000, help="Bootstrap resamples of the held-out images: the tuned weights average a greedy pass on each; 0: one pass on the images themselves.")]
AllowMissingOpt = Annotated[bool, typer.Option(
    "--allow-missing", help="Bag the runs there are while others of the spec still train or lost their folder.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="KEY.PATH=VALUE",
    help="Change one spec value before validation (repeatable; values are YAML), e.g. --set train.lr=0.003 "
         "--set models.vit.epochs=5.")]


def unwrap_help(doc: str | None) -> str | None:
    """A docstring as paragraphs of one line each (`Example:` lines kept apart): Typer keeps the
    source's line breaks and rich wraps again at the terminal's width, which left every other
    line a few words long."""
    if not doc:
        return doc
    paragraphs = []
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        lines: list[str] = []
        for line in paragraph.splitlines():
            line = line.strip()
            if lines and not line.startswith("Example:") and not lines[-1].startswith("Example:"):
                lines[-1] += " " + line
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def friendly_errors(command):
    """One clear line and the error's exit code instead of a traceback, for errors a user can fix."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LedgerError as error:
            err_console.print(f"error: {error}", style="red", markup=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None

    wrapper.__doc__ = unwrap_help(command.__doc__)
    return wrapper


def _version(value: bool) -> None:
    if value:
        console.print(f"ledger {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Road to the Top in four commands."""


def _load(spec_path: Path, check_models: bool = True, overrides: list[str] | None = None, check_data: bool = False):
    from ledger.spec.loader import load_spec

    return load_spec(spec_path, overrides or (), check_models=check_models, check_data=check_data)


def _weights(pairs: list[str] | None) -> dict[str, float]:
    weights = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            weights[name] = float(value)
        except ValueError:
            raise SpecError(f"--weight {pair!r}: expected NAME=NUMBER, e.g. --weight vit=2") from None
    return weights


def _bag_options(run: list[str] | None, weight: list[str] | None, use_tuned: bool, steps: int, resamples: int,
                 tune: bool = False, allow_missing: bool = False):
    """The bag options of ensemble, predict SPEC and export, as one object."""
    from ledger.bag.submission import BagOptions

    return BagOptions(tuple(run or ()), _weights(weight), tune or use_tuned, use_tuned, steps, resamples, allow_missing)


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _device(name: str | None):
    from ledger.training.device import default_device, parse_device

    return parse_device(name) if name else default_device()


def _accuracy(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"  # value != value: nan


def _coverage(images: int | None, train_images: int | None) -> str:
    return "" if images is None else f"{images}/{train_images if train_images is not None else '?'}"
