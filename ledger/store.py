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
from datetime import datetime, timezone
from pathlib import Path

from ledger.errors import LedgerError

DEFAULT_HOME = "runs"

# Version 1: the first schema (user_version 0 on disk). Kept verbatim: migrations start from it.
_SCHEMA_V1 = """
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

# Version 2: runs become resumable units of work. The status CHECK gains 'interrupted', which
# SQLite cannot alter in place, so the table is rebuilt and every row copied by column name.
# Artifact folders are stored relative to the ledger home from here on.
_RUNS_V2 = """
CREATE TABLE runs_v2 (
    id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    model TEXT NOT NULL,
    arch TEXT NOT NULL,
    size TEXT NOT NULL,
    split_seed INTEGER,
    accum INTEGER,
    batch_size INTEGER,
    epochs INTEGER,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'interrupted')),
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
    spec TEXT,
    host TEXT,
    fingerprint TEXT,
    run_number INTEGER,
    fold INTEGER,
    folds INTEGER,
    train_seed INTEGER,
    resumed_epochs INTEGER
);
"""

_RUNS_V1_COLUMNS = ("id, experiment, model, arch, size, split_seed, accum, batch_size, epochs, status, started_at,"
                    " finished_at, valid_loss, error_rate, images_per_s, peak_bytes, device, precision, artifact_dir,"
                    " error, pid, spec")


def _migrate_v2(db: sqlite3.Connection, home: Path) -> None:
    db.execute(_RUNS_V2)
    db.execute(f"INSERT INTO runs_v2 ({_RUNS_V1_COLUMNS}) SELECT {_RUNS_V1_COLUMNS} FROM runs")
    db.execute("DROP TABLE runs")
    db.execute("ALTER TABLE runs_v2 RENAME TO runs")
    db.execute("CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs (experiment, status)")
    db.execute("CREATE INDEX IF NOT EXISTS runs_by_fingerprint ON runs (fingerprint, status)")
    # Version 1 stored artifact paths relative to the current folder of the command that wrote
    # them; make those that still resolve relative to the home.
    for run_id, artifact_dir in db.execute("SELECT id, artifact_dir FROM runs WHERE artifact_dir IS NOT NULL").fetchall():
        path = Path(artifact_dir)
        try:
            relative = path.resolve().relative_to(home.resolve())
        except ValueError:
            continue
        db.execute("UPDATE runs SET artifact_dir=? WHERE id=?", (str(relative), run_id))
    for column, kind in (("oob_images", "INTEGER"), ("train_images", "INTEGER"), ("sha256", "TEXT"),
                         ("public_score", "REAL"), ("private_score", "REAL"), ("message", "TEXT"),
                         ("excluded", "TEXT")):
        db.execute(f"ALTER TABLE submissions ADD COLUMN {column} {kind}")


def _migrate_v3_lr_finds(db: sqlite3.Connection, home: Path) -> None:
    # Learning-rate range tests (`ledger lr-find`): suggestions and the smoothed curve as JSON, so
    # a plot can be redrawn; the plot path is relative to the home when it lies inside it.
    db.execute(
        "CREATE TABLE lr_finds (id TEXT PRIMARY KEY, experiment TEXT NOT NULL, model TEXT NOT NULL, arch TEXT,"
        " size TEXT, accum INTEGER, frozen INTEGER, device TEXT, stopped TEXT, batches INTEGER,"
        " suggestions TEXT NOT NULL, curve TEXT, plot TEXT, created_at TEXT NOT NULL)"
    )


def _migrate_v4_submit(db: sqlite3.Connection, home: Path) -> None:
    # `ledger submit`: when a file was handed to kaggle, for which competition, and kaggle's exit
    # status (0: accepted for scoring), beside the message the submissions table already holds.
    for column, kind in (("submitted_at", "TEXT"), ("competition", "TEXT"), ("kaggle_exit", "INTEGER")):
        db.execute(f"ALTER TABLE submissions ADD COLUMN {column} {kind}")


def _migrate_v5_targets(db: sqlite3.Connection, home: Path) -> None:
    # Target cards (ledger.targets): a probe records the card it answered for and the precision
    # `auto` resolved to; its trials the allocator's peaks and retries (CUDA) and their timings; a
    # run the probe's predicted peak for its configuration, beside the peak it measured.
    for column, kind in (("predicted_peak_bytes", "INTEGER"), ("peak_vs_prediction", "TEXT"),
                         ("peak_over_prediction", "INTEGER")):
        db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
    for column in ("target", "precision"):
        db.execute(f"ALTER TABLE probe_choices ADD COLUMN {column} TEXT")
    for column, kind in _PROBE_TRIAL_V5_COLUMNS:
        db.execute(f"ALTER TABLE probe_trials ADD COLUMN {column} {kind}")


_PROBE_TRIAL_V5_COLUMNS = (("allocated_peak_bytes", "INTEGER"), ("reserved_peak_bytes", "INTEGER"),
                           ("alloc_retries", "INTEGER"), ("step_seconds", "REAL"),
                           ("predict_seconds_per_image", "REAL"), ("augmented_seconds_per_image", "REAL"))


# Each entry upgrades the schema from its index to index + 1, in one transaction.
_MIGRATIONS = [
    # executescript would commit the migration's transaction; statements one by one keep it whole.
    lambda db, home: [db.execute(statement) for statement in _SCHEMA_V1.split(";") if statement.strip()],
    _migrate_v2,
    _migrate_v3_lr_finds,
    _migrate_v4_submit,
    _migrate_v5_targets,
]
SCHEMA_VERSION = len(_MIGRATIONS)


def migrate(db: sqlite3.Connection, home: Path) -> None:
    """Upgrade the ledger to SCHEMA_VERSION without losing a row; newer ledgers are refused."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise LedgerError(f"{home}: ledger schema {version} is newer than this ledger ({SCHEMA_VERSION}); upgrade ledger")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            _MIGRATIONS[target - 1](db, home)
            db.execute(f"PRAGMA user_version={target}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_id() -> str:
    """Sortable by time, unique without coordination: 20261122-043501-3fa9c1."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, but another user's
    return True


def resolve_home(home: str | Path | None) -> Path:
    return Path(home or os.environ.get("LEDGER_HOME") or DEFAULT_HOME)


class Store:
    def __init__(self, home: str | Path | None = None, existing: bool = False):
        """`existing=True` for commands that only read: a mistyped --home is an error there, not a
        new empty ledger that would show nothing and leave a stray folder behind."""
        self.home = resolve_home(home)
        if existing and not (self.home / "ledger.db").is_file():
            where = "folder not found" if not self.home.exists() else "no ledger.db in it"
            raise LedgerError(f"{self.home}: no ledger here ({where}); pass --home the folder `ledger train` "
                              f"wrote to, or set LEDGER_HOME")
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.home / "ledger.db", timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise LedgerError(f"{self.home}: cannot open the ledger ({e})") from None
        self.db.row_factory = sqlite3.Row
        # WAL: readers (`ledger runs`) never block a training process writing its rows.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=30000")
        migrate(self.db, self.home)

    def close(self) -> None:
        self.db.close()

    def run_dir(self, experiment: str, run_id: str) -> Path:
        return self.home / experiment / run_id

    # ------------------------------------------------------------ runs
    # Written only through `ledger.record`: columns are named, never positional.

    def insert_run(self, row: dict) -> None:
        columns = ", ".join(row)
        self.db.execute(f"INSERT INTO runs ({columns}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))

    def update_run(self, run_id: str, changes: dict) -> None:
        assignments = ", ".join(f"{column}=?" for column in changes)
        self.db.execute(f"UPDATE runs SET {assignments} WHERE id=?", (*changes.values(), run_id))

    def delete_run(self, run_id: str) -> None:
        self.db.execute("DELETE FROM runs WHERE id=?", (run_id,))

    def artifact_path(self, row: dict) -> Path | None:
        """A run's folder: stored relative to the home (absolute in ledgers written elsewhere)."""
        if not row.get("artifact_dir"):
            return None
        path = Path(row["artifact_dir"])
        return path if path.is_absolute() else self.home / path

    def mark_stale_runs(self) -> list[str]:
        """`running` rows of this host whose process is gone become `interrupted`; returns their ids.
        Rows from other hosts are left alone: their process may well be alive there."""
        host, stale = socket.gethostname(), []
        for row in self.db.execute("SELECT id, pid, host FROM runs WHERE status='running'").fetchall():
            if (row["host"] or host) != host or row["pid"] is None:
                continue
            if row["pid"] != os.getpid() and not _process_alive(row["pid"]):
                stale.append(row["id"])
        for run_id in stale:
            self.update_run(run_id, {"status": "interrupted", "finished_at": now(),
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
                     margin: float, chosen_k: int | None, trials: list, target: str | None = None,
                     precision: str | None = None) -> str:
        probe_id = new_id()
        extra = [column for column, _ in _PROBE_TRIAL_V5_COLUMNS]
        with self.db:  # one transaction: a probe is recorded whole or not at all
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT INTO probe_choices (id, experiment, model, probe_key, size, device, budget_bytes, margin,"
                " chosen_k, created_at, target, precision) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (probe_id, experiment, model, probe_key, size, device, budget_bytes, margin, chosen_k, now(), target,
                 precision),
            )
            limit = int(budget_bytes * (1 - margin))
            self.db.executemany(
                "INSERT INTO probe_trials (probe_id, k, micro_batch, peak_bytes, fits, out_of_memory, seconds,"
                f" startup_seconds, error, {', '.join(extra)}) VALUES ({', '.join('?' * (9 + len(extra)))})",
                [(probe_id, t.k, t.micro_batch, t.peak_bytes, int(t.fits(limit)), int(t.out_of_memory), t.seconds,
                  t.startup_seconds, t.error, *(getattr(t, column, None) for column in extra)) for t in trials],
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
                          oob_accuracy: float | None, **extra) -> str:
        """`extra`: any of oob_images, train_images, sha256, excluded (JSON text), message."""
        submission_id = new_id()
        row = dict(id=submission_id, experiment=experiment, path=str(path), created_at=now(),
                   runs=json.dumps(run_ids), weights=json.dumps(weights), oob_accuracy=oob_accuracy, **extra)
        self.db.execute(f"INSERT INTO submissions ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                        tuple(row.values()))
        return submission_id

    def submissions(self, experiment: str | None = None) -> list[dict]:
        rows = self._rows_of("submissions", experiment)
        for row in rows:
            row["runs"], row["weights"] = json.loads(row["runs"]), json.loads(row["weights"])
        return rows

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
        plot = row.get("plot")
        if plot:
            try:
                row["plot"] = str(Path(plot).resolve().relative_to(self.home.resolve()))
            except ValueError:
                row["plot"] = str(Path(plot).resolve())
        self.db.execute(f"INSERT INTO lr_finds ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                        tuple(row.values()))
        return row["id"]

    def lr_finds(self, experiment: str | None = None) -> list[dict]:
        rows = self._rows_of("lr_finds", experiment)
        for row in rows:
            row["suggestions"] = json.loads(row["suggestions"])
        return rows
