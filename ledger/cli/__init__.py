"""The `ledger` command: a thin Typer layer that parses, loads the spec, calls one function, prints.

`common.py` holds the app, the shared options and helpers; each workflow area's commands live in
their own module and register on the app when imported here: `basics` (data, check, schema, score), `probe`
(probe-memory), `train` (lr-find, train), `ensemble` (ensemble, predict, report), `export`,
`ledger_cmds` (runs, submissions, submit). `ledger.cli:app` is the console script.
"""

from ledger.cli import basics, ensemble, export, ledger_cmds, probe, train  # noqa: F401  (they register)
from ledger.cli.common import WORKFLOW, app, console  # noqa: F401  (the entry point, and what tests read)
