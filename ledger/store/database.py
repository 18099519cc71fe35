"""The ledger: one SQLite file (WAL, busy timeout) under LEDGER_HOME, beside the run folders.

Tables: `runs` (one row per training run), `probe_trials` (every memory-probe trial),
`probe_choices` (the accumulation factor each probe chose), `submissions` (which runs, with which
weights, made which file). Only `done` runs have a complete artifact folder.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import sys
from datetime import datetime, timezone
from pathlib import Path

from ledger.errors import LedgerError
from ledger.store.lost_ledger import refuse_lost_ledger
from ledger.store.migrations import PROBE_TRIAL_V8_COLUMNS, SCHEMA_VERSION, migrate, path_from_home, path_in_home
from ledger.processes import process_alive
from ledger.store.rows import LrFindRow, ProbeRow, ProbeTrialRow, RunRow, RunStatus, SubmissionRow

# SQLite binds exact strs only: a status is stored as its word.
sqlite3.register_adapter(RunStatus, lambda status: status.value)

DEFAULT_HOME = "runs"

def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_id() -> str:
    """Sortable by time, unique without coordination: 20261122-043501-3fa9c1."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def resolve_home(home: str | Path | None) -> Path:
    return Path(home or os.environ.get("LEDGER_HOME") or DEFAULT_HOME)


def _cause(error: sqlite3.Error | OSError, path: Path | None = None) -> str:
    """What a user can act on, from SQLite's message; SQLite's vaguer ones ("disk I/O error",
    "unable to open database file") are told apart by looking at the ledger's folder."""
    text = str(error)
    folder = Path(path).parent if path is not None else None
    if "disk is full" in text or (folder is not None and "disk I/O error" in text and _full(folder)):
        return f"disk full (no space left in {folder})" if folder is not None else "disk full"
    if "readonly" in text or "read-only" in text or (
            folder is not None and "unable to open" in text and folder.is_dir() and not os.access(folder, os.W_OK)):
        return f"read-only ({folder} cannot be written): this command writes to the ledger" if folder is not None \
            else "read-only: this command writes to the ledger"
    if "not a database" in text or "malformed" in text:
        return f"corrupt ({text}); restore it from a copy"
    return text


def _full(folder: Path) -> bool:
    """Whether the filesystem holding `folder` has (almost) no room left for SQLite's pages."""
    import shutil

    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


class _LedgerConnection(sqlite3.Connection):
    """Every SQLite error, on any statement, becomes one line naming the ledger file and the cause."""

    def execute(self, *args):
        try:
            return super().execute(*args)
        except sqlite3.Error as error:
            raise LedgerError(f"{self.ledger_path}: {_cause(error, self.ledger_path)}") from None

    def executemany(self, *args):
        try:
            return super().executemany(*args)
        except sqlite3.Error as error:
            raise LedgerError(f"{self.ledger_path}: {_cause(error, self.ledger_path)}") from None


class Store:
    def __init__(self, home: str | Path | None = None, existing: bool = False, rebuild: bool = False):
        """`existing=True` for commands that only read: a mistyped --home is an error there, not a
        new empty ledger that would show nothing and leave a stray folder behind. A ledger.db lost
        beside run folders is refused (`lost_ledger`) unless `rebuild` (`ledger runs --rebuild`)."""
        self.home = resolve_home(home)
        if not rebuild:
            refuse_lost_ledger(self.home)
        if existing and not (self.home / "ledger.db").is_file():
            where = "folder not found" if not self.home.exists() else "no ledger.db in it"
            raise LedgerError(f"{self.home}: no ledger here ({where}); pass --home the folder `ledger train` "
                              f"wrote to, or set LEDGER_HOME")
        path = self.home / "ledger.db"
        self.read_only = False
        try:
            self.db = self._connect(path)
            # WAL: readers (`ledger runs`) never block a training process writing its rows.
            self.db.execute("PRAGMA journal_mode=WAL")
            migrate(self.db, self.home)
            self.housekeeping()
        except LedgerError:
            if not existing:
                raise
            # A ledger this user may not write (a read-only file, folder or mount) still serves the
            # commands that only read it; anything else (a corrupt file) keeps its own error.
            self._open_read_only(path)

    def _connect(self, path: Path, query: str | None = None) -> sqlite3.Connection:
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            target = f"{path.absolute().as_uri()}?{query}" if query else path
            db = sqlite3.connect(target, timeout=30, isolation_level=None, factory=_LedgerConnection,
                                 uri=query is not None)
        except (OSError, sqlite3.Error) as e:
            raise LedgerError(f"{self.home}: cannot open the ledger ({_cause(e, path)})") from None
        db.ledger_path = path
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=30000")
        return db

    def _open_read_only(self, path: Path) -> None:
        """Read-only, as SQLite allows it: `mode=ro` when the WAL index can be shared, else
        `immutable=1` (a read-only folder, where no one can be writing). Raises the error that
        brought us here when neither reads."""
        error = sys.exc_info()[1]
        for query in ("mode=ro", "immutable=1"):
            try:
                db = self._connect(path, query)
                version = db.execute("PRAGMA user_version").fetchone()[0]
                db.execute("SELECT count(*) FROM runs").fetchone()
            except LedgerError:
                continue
            if version != SCHEMA_VERSION:
                raise LedgerError(f"{path}: read-only, and its schema ({version}) needs upgrading to "
                                  f"{SCHEMA_VERSION} by a command that may write it")
            self.db, self.read_only = db, True
            return
        raise error

    def housekeeping(self) -> None:
        """What every command settles first, so no table shows a stale state: `running` rows whose
        process is gone become `interrupted`; `done` rows whose folder is gone become `missing`
        (they no longer count, so `train` owes them again), and back when the folder returns (a
        shared home mounted again)."""
        self.mark_stale_runs()
        for row in self.db.execute("SELECT * FROM runs WHERE status IN (?, ?)",
                                   (RunStatus.DONE, RunStatus.MISSING)).fetchall():
            folder = self.artifact_path(RunRow.from_columns(dict(row)))
            if folder is None:
                continue  # nothing on record to look for
            present = folder.is_dir()
            if row["status"] == RunStatus.DONE and not present:
                self.update_run(row["id"], {"status": RunStatus.MISSING, "error": f"run folder {folder} is gone"})
            elif row["status"] == RunStatus.MISSING and present:
                self.update_run(row["id"], {"status": RunStatus.DONE, "error": None})

    def close(self) -> None:
        self.db.close()

    def run_dir(self, experiment: str, run_id: str) -> Path:
        return self.home / experiment / run_id

    # ------------------------------------------------------------ runs
    # Written only through `ledger.runs.recording`: columns are named, never positional.

    def _insert(self, table: str, row: dict) -> None:
        """The one INSERT: columns named, never positional."""
        self.db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                        tuple(row.values()))

    def home_path(self, path: Path) -> str:
        """How a file is recorded: relative to the home when it lies inside it (a moved or copied home
        keeps working, and a copy never points at the original's files), else absolute."""
        return path_in_home(path, self.home)

    def recorded_path(self, stored: str) -> Path:
        """A recorded file's path here (the other half of `home_path`)."""
        return path_from_home(stored, self.home)

    def insert_run(self, row: dict) -> None:
        self._insert("runs", row)

    def update_run(self, run_id: str, changes: dict) -> None:
        assignments = ", ".join(f"{column}=?" for column in changes)
        self.db.execute(f"UPDATE runs SET {assignments} WHERE id=?", (*changes.values(), run_id))

    def delete_run(self, run_id: str) -> None:
        self.db.execute("DELETE FROM runs WHERE id=?", (run_id,))

    def artifact_path(self, row: RunRow) -> Path | None:
        """A run's folder: stored relative to the home (absolute in ledgers written elsewhere)."""
        return self.recorded_path(row.artifact_dir) if row.artifact_dir else None

    def mark_stale_runs(self) -> list[str]:
        """`running` rows of this host whose process is gone become `interrupted`; returns their ids.
        Rows from other hosts are left alone: their process may well be alive there."""
        host, stale = socket.gethostname(), []
        for row in self.db.execute("SELECT id, pid, host FROM runs WHERE status=?", (RunStatus.RUNNING,)).fetchall():
            if (row["host"] or host) != host or row["pid"] is None:
                continue
            if row["pid"] != os.getpid() and not process_alive(row["pid"]):
                stale.append(row["id"])
        for run_id in stale:
            self.update_run(run_id, {"status": RunStatus.INTERRUPTED, "finished_at": now(),
                                     "error": "interrupted (its process is gone)"})
        return stale

    def experiments(self) -> list[str]:
        """Every experiment named by a row of any table, sorted."""
        tables = ("runs", "probe_choices", "submissions", "lr_finds")
        sql = " UNION ".join(f"SELECT experiment FROM {t}" for t in tables)
        return sorted(row[0] for row in self.db.execute(sql))

    def check_experiment(self, experiment: str) -> None:
        """An unknown --experiment names the ones there are, instead of showing empty tables."""
        known = self.experiments()
        if experiment not in known:
            there = f"experiments here: {', '.join(known)}" if known else "the ledger is empty"
            raise LedgerError(f"experiment {experiment!r}: not in {self.home} ({there})")

    def runs(self, experiment: str | None = None, status: str | None = None, ids: list[str] | None = None
             ) -> list[RunRow]:
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if experiment:
            sql += " AND experiment=?"
            args.append(experiment)
        if status:
            sql += " AND status=?"
            args.append(status)
        if ids:
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            args += ids
        rows = self.db.execute(sql + " ORDER BY rowid", args)  # the order they started
        return [RunRow.from_columns(dict(row)) for row in rows]

    # ------------------------------------------------------------ probes

    def record_probe(self, experiment: str, model: str, probe_key: str, size: str, device: str, budget_bytes: int,
                     margin: float, chosen_k: int | None, trials: list, target: str | None = None,
                     precision: str | None = None) -> str:
        probe_id = new_id()
        extra = [column for column, _ in PROBE_TRIAL_V8_COLUMNS]
        limit = int(budget_bytes * (1 - margin))
        with self.db:  # one transaction: a probe is recorded whole or not at all
            self.db.execute("BEGIN")
            self._insert("probe_choices", dict(
                id=probe_id, experiment=experiment, model=model, probe_key=probe_key, size=size, device=device,
                budget_bytes=budget_bytes, margin=margin, chosen_k=chosen_k, created_at=now(), target=target,
                precision=precision))
            for t in trials:
                self._insert("probe_trials", dict(
                    probe_id=probe_id, k=t.k, micro_batch=t.micro_batch, peak_bytes=t.peak_bytes,
                    fits=int(t.fits(limit)), out_of_memory=int(t.out_of_memory), seconds=t.seconds,
                    startup_seconds=t.startup_seconds, error=t.error) | {c: getattr(t, c, None) for c in extra})
        return probe_id

    def latest_probe(self, probe_key: str, device: str, budget_bytes: int, margin: float) -> ProbeRow | None:
        row = self.db.execute(
            "SELECT * FROM probe_choices WHERE probe_key=? AND device=? AND budget_bytes=? AND margin=?"
            " ORDER BY rowid DESC LIMIT 1",
            (probe_key, device, budget_bytes, margin),
        ).fetchone()
        return None if row is None else self._probe(dict(row))

    def _rows_of(self, table: str, experiment: str | None) -> list[dict]:
        """A table's rows in the order they were written, optionally of one experiment."""
        where, args = (" WHERE experiment=?", [experiment]) if experiment else ("", [])
        return [dict(r) for r in self.db.execute(f"SELECT * FROM {table}{where} ORDER BY rowid", args)]

    def _probe(self, columns: dict) -> ProbeRow:
        trials = self.db.execute("SELECT * FROM probe_trials WHERE probe_id=? ORDER BY rowid", (columns["id"],))
        return ProbeRow.from_columns(columns | {"trials": tuple(ProbeTrialRow.from_columns(dict(r)) for r in trials)})

    def probes(self, experiment: str | None = None) -> list[ProbeRow]:
        """Every probe's choice with its trials, oldest first."""
        return [self._probe(row) for row in self._rows_of("probe_choices", experiment)]

    # ------------------------------------------------------------ submissions

    def record_submission(self, experiment: str, path: Path, run_ids: list[str], weights: dict[str, float],
                          oob_accuracy: float | None, **extra) -> str:
        """`extra`: any of oob_images, train_images, sha256, excluded (JSON text), message, metric,
        oob_score (the out-of-bag figure on that metric), decision (JSON text)."""
        submission_id = new_id()
        self._insert("submissions", dict(
            id=submission_id, experiment=experiment, path=self.home_path(path), created_at=now(),
            runs=json.dumps(run_ids), weights=json.dumps(weights), oob_accuracy=oob_accuracy, **extra))
        return submission_id

    def submissions(self, experiment: str | None = None) -> list[SubmissionRow]:
        return [SubmissionRow.from_columns(row) for row in self._rows_of("submissions", experiment)]

    def submission_path(self, row: SubmissionRow) -> Path:
        return self.recorded_path(row.path)

    def submission_at(self, path: Path) -> SubmissionRow | None:
        """The recorded submission whose file is `path`, if any."""
        target = Path(path).resolve()
        return next((row for row in self.submissions() if self.submission_path(row).resolve() == target), None)

    def update_submission(self, submission_id: str, changes: dict) -> None:
        """Leaderboard scores (public_score, private_score) or a hand-off to kaggle (message,
        submitted_at, competition, kaggle_exit), added after the file was written."""
        assignments = ", ".join(f"{column}=?" for column in changes)
        self.db.execute(f"UPDATE submissions SET {assignments} WHERE id=?", (*changes.values(), submission_id))

    # ------------------------------------------------------------ learning-rate range tests

    def record_lr_find(self, row: dict) -> str:
        """One `lr-find` result: id, experiment, model, suggestions (JSON) and plot, plus any other
        lr_finds column. created_at is filled in; a plot inside the home is stored relative to it."""
        row = dict(row, created_at=row.get("created_at") or now())
        if row.get("plot"):
            row["plot"] = self.home_path(Path(row["plot"]))
        self._insert("lr_finds", row)
        return row["id"]

    def lr_finds(self, experiment: str | None = None) -> list[LrFindRow]:
        return [LrFindRow.from_columns(row) for row in self._rows_of("lr_finds", experiment)]
