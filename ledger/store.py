"""The ledger: one SQLite file (WAL, busy timeout) under LEDGER_HOME, beside the run folders.

Tables: `runs` (one row per training run), `probe_trials` (every memory-probe trial),
`probe_choices` (the accumulation factor each probe chose), `submissions` (which runs, with which
weights, made which file). Only `done` runs have a complete artifact folder.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from ledger.errors import LedgerError

DEFAULT_HOME = "runs"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    model TEXT NOT NULL,
    arch TEXT NOT NULL,
    size TEXT NOT NULL,
    split_seed INTEGER,
    accum INTEGER,
    batch_size INTEGER,
    epochs INTEGER,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    started_at TEXT NOT NULL,
    finished_at TEXT,
    valid_loss REAL,
    error_rate REAL,
    images_per_s REAL,
    peak_bytes INTEGER,
    device TEXT,
    precision TEXT,
    artifact_dir TEXT,
    error TEXT,
    pid INTEGER,
    spec TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs (experiment, status);
CREATE TABLE IF NOT EXISTS probe_choices (
    id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    model TEXT NOT NULL,
    probe_key TEXT NOT NULL,
    size TEXT NOT NULL,
    device TEXT NOT NULL,
    budget_bytes INTEGER NOT NULL,
    margin REAL NOT NULL,
    chosen_k INTEGER,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS probe_trials (
    probe_id TEXT NOT NULL REFERENCES probe_choices (id),
    k INTEGER NOT NULL,
    micro_batch INTEGER NOT NULL,
    peak_bytes INTEGER,
    fits INTEGER NOT NULL,
    out_of_memory INTEGER NOT NULL,
    seconds REAL NOT NULL,
    startup_seconds REAL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS submissions (
    id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at TEXT NOT NULL,
    runs TEXT NOT NULL,
    weights TEXT NOT NULL,
    oob_accuracy REAL
);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_id() -> str:
    """Sortable by time, unique without coordination: 20261122-043501-3fa9c1."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def resolve_home(home: str | Path | None) -> Path:
    return Path(home or os.environ.get("LEDGER_HOME") or DEFAULT_HOME)


class Store:
    def __init__(self, home: str | Path | None = None):
        self.home = resolve_home(home)
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.home / "ledger.db", timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise LedgerError(f"{self.home}: cannot open the ledger ({e})") from None
        self.db.row_factory = sqlite3.Row
        # WAL: readers (`ledger runs`) never block a training process writing its rows.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def run_dir(self, experiment: str, run_id: str) -> Path:
        return self.home / experiment / run_id

    # ------------------------------------------------------------ runs

    def start_run(self, run_id: str, experiment: str, model: str, arch: str, size: str, split_seed: int,
                  accum: int, batch_size: int, epochs: int, device: str, precision: str, spec: dict) -> None:
        self.db.execute(
            "INSERT INTO runs (id, experiment, model, arch, size, split_seed, accum, batch_size, epochs, status,"
            " started_at, device, precision, pid, spec) VALUES (?,?,?,?,?,?,?,?,?,'running',?,?,?,?,?)",
            (run_id, experiment, model, arch, size, split_seed, accum, batch_size, epochs, now(), device, precision,
             os.getpid(), json.dumps(spec)),
        )

    def finish_run(self, run_id: str, artifact_dir: Path, valid_loss: float, error_rate: float,
                   images_per_s: float, peak_bytes: int) -> None:
        self.db.execute(
            "UPDATE runs SET status='done', finished_at=?, valid_loss=?, error_rate=?, images_per_s=?,"
            " peak_bytes=?, artifact_dir=? WHERE id=?",
            (now(), valid_loss, error_rate, images_per_s, peak_bytes, str(artifact_dir), run_id),
        )

    def fail_run(self, run_id: str, error: str) -> None:
        self.db.execute("UPDATE runs SET status='failed', finished_at=?, error=? WHERE id=?", (now(), error, run_id))

    def runs(self, experiment: str | None = None, status: str | None = None, ids: list[str] | None = None) -> list[dict]:
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
        return [dict(row) for row in self.db.execute(sql + " ORDER BY rowid", args)]  # the order they started

    # ------------------------------------------------------------ probes

    def record_probe(self, experiment: str, model: str, probe_key: str, size: str, device: str, budget_bytes: int,
                     margin: float, chosen_k: int | None, trials: list) -> str:
        probe_id = new_id()
        with self.db:  # one transaction: a probe is recorded whole or not at all
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT INTO probe_choices VALUES (?,?,?,?,?,?,?,?,?,?)",
                (probe_id, experiment, model, probe_key, size, device, budget_bytes, margin, chosen_k, now()),
            )
            limit = int(budget_bytes * (1 - margin))
            self.db.executemany(
                "INSERT INTO probe_trials VALUES (?,?,?,?,?,?,?,?,?)",
                [(probe_id, t.k, t.micro_batch, t.peak_bytes, int(t.fits(limit)), int(t.out_of_memory), t.seconds,
                  t.startup_seconds, t.error) for t in trials],
            )
        return probe_id

    def latest_probe(self, probe_key: str, device: str, budget_bytes: int, margin: float) -> dict | None:
        row = self.db.execute(
            "SELECT * FROM probe_choices WHERE probe_key=? AND device=? AND budget_bytes=? AND margin=?"
            " ORDER BY rowid DESC LIMIT 1",
            (probe_key, device, budget_bytes, margin),
        ).fetchone()
        return dict(row) if row else None

    def _rows_of(self, table: str, experiment: str | None) -> list[dict]:
        """A table's rows in the order they were written, optionally of one experiment."""
        where, args = (" WHERE experiment=?", [experiment]) if experiment else ("", [])
        return [dict(r) for r in self.db.execute(f"SELECT * FROM {table}{where} ORDER BY rowid", args)]

    def probes(self, experiment: str | None = None) -> list[dict]:
        """Every probe's choice with its trials, oldest first."""
        rows = self._rows_of("probe_choices", experiment)
        for row in rows:
            row["trials"] = self.probe_trials(row["id"])
        return rows

    def probe_trials(self, probe_id: str) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM probe_trials WHERE probe_id=?", (probe_id,))]

    # ------------------------------------------------------------ submissions

    def record_submission(self, experiment: str, path: Path, run_ids: list[str], weights: dict[str, float],
                          oob_accuracy: float | None) -> str:
        submission_id = new_id()
        self.db.execute(
            "INSERT INTO submissions VALUES (?,?,?,?,?,?,?)",
            (submission_id, experiment, str(path), now(), json.dumps(run_ids), json.dumps(weights), oob_accuracy),
        )
        return submission_id

    def submissions(self, experiment: str | None = None) -> list[dict]:
        rows = self._rows_of("submissions", experiment)
        for row in rows:
            row["runs"], row["weights"] = json.loads(row["runs"]), json.loads(row["weights"])
        return rows
