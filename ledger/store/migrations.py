"""The ledger's schema and its migrations: versioned steps from the first schema, each run in one
transaction (`BEGIN IMMEDIATE ... PRAGMA user_version=N ... COMMIT`), a newer ledger refused.
A new table or column is one function appended to `_MIGRATIONS`; rows are never lost."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from ledger.errors import LedgerError

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


def _migrate_v5_metric(db: sqlite3.Connection, home: Path) -> None:
    # The competition's metric (ledger.bag.metrics) and the out-of-bag figure on it, beside the
    # out-of-bag accuracy; submissions made before were made and estimated on accuracy.
    for column, kind in (("metric", "TEXT"), ("oob_score", "REAL")):
        db.execute(f"ALTER TABLE submissions ADD COLUMN {column} {kind}")
    db.execute("UPDATE submissions SET metric='accuracy', oob_score=oob_accuracy")


def _migrate_v6_run_metric(db: sqlite3.Connection, home: Path) -> None:
    # Each run's figures on the competition's metric (plain, the last epoch's; and TTA'd) and its
    # TTA'd accuracy, beside the plain error rate the row already had.
    for column, kind in (("metric", "TEXT"), ("valid_metric", "REAL"), ("tta_metric", "REAL"), ("tta_accuracy", "REAL")):
        db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")


def path_in_home(path: Path, home: Path) -> str:
    """How the ledger records a file: relative to the home when it lies inside it (so a moved or
    copied home keeps working and a copy never points at the original's files), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(home.resolve()))
    except ValueError:
        return str(Path(path).resolve())


def path_from_home(stored: str, home: Path) -> Path:
    """A recorded file's path: the other half of `path_in_home`."""
    path = Path(stored)
    return path if path.is_absolute() else Path(home) / path


def _migrate_v7_missing(db: sqlite3.Connection, home: Path) -> None:
    # Runs gain the status 'missing' (a done run whose folder is gone: it no longer counts), which
    # needs the table rebuilt for its CHECK; every column is copied by name. Submission paths
    # become relative to the home.
    sql = db.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='runs'").fetchone()[0]
    old_check = "'failed', 'interrupted')"
    if old_check in sql:
        columns = ", ".join(row[1] for row in db.execute("PRAGMA table_info(runs)"))
        create = re.sub(r'^CREATE TABLE\s+("runs"|runs)', "CREATE TABLE runs_v7", sql)
        db.execute(create.replace(old_check, "'failed', 'interrupted', 'missing')"))
        db.execute(f"INSERT INTO runs_v7 ({columns}) SELECT {columns} FROM runs")
        db.execute("DROP TABLE runs")
        db.execute("ALTER TABLE runs_v7 RENAME TO runs")
        db.execute("CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs (experiment, status)")
        db.execute("CREATE INDEX IF NOT EXISTS runs_by_fingerprint ON runs (fingerprint, status)")
    for submission_id, path in db.execute("SELECT id, path FROM submissions").fetchall():
        if Path(path).is_absolute():
            db.execute("UPDATE submissions SET path=? WHERE id=?", (path_in_home(Path(path), home), submission_id))


def _migrate_v8_targets(db: sqlite3.Connection, home: Path) -> None:
    # Target cards (ledger.probe.targets): a probe records the card it answered for and the precision
    # `auto` resolved to; its trials the allocator's peaks and retries (CUDA) and their timings; a
    # run the probe's predicted peak for its configuration, beside the peak it measured.
    for column, kind in (("predicted_peak_bytes", "INTEGER"), ("peak_vs_prediction", "TEXT"),
                         ("peak_over_prediction", "INTEGER")):
        db.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
    for column in ("target", "precision"):
        db.execute(f"ALTER TABLE probe_choices ADD COLUMN {column} TEXT")
    for column, kind in PROBE_TRIAL_V8_COLUMNS:
        db.execute(f"ALTER TABLE probe_trials ADD COLUMN {column} {kind}")


PROBE_TRIAL_V8_COLUMNS = (("allocated_peak_bytes", "INTEGER"), ("reserved_peak_bytes", "INTEGER"),
                          ("alloc_retries", "INTEGER"), ("step_seconds", "REAL"),
                          ("predict_seconds_per_image", "REAL"), ("augmented_seconds_per_image", "REAL"))


def _migrate_v9_checksums(db: sqlite3.Connection, home: Path) -> None:
    # The sha256 of a run's weights and predictions when it finished (ledger.runs.checksums): the
    # commands that read them refuse a file damaged since.
    db.execute("ALTER TABLE runs ADD COLUMN checksums TEXT")


def _migrate_v10_decision(db: sqlite3.Connection, home: Path) -> None:
    # A multi-label or regression submission's thresholds or cut-offs, chosen out of bag (JSON of
    # ledger.bag.decisions.Decision): predict and an export bundle decide with the same ones.
    db.execute("ALTER TABLE submissions ADD COLUMN decision TEXT")


# Each entry upgrades the schema from its index to index + 1, in one transaction.
_MIGRATIONS = [
    # executescript would commit the migration's transaction; statements one by one keep it whole.
    lambda db, home: [db.execute(statement) for statement in _SCHEMA_V1.split(";") if statement.strip()],
    _migrate_v2,
    _migrate_v3_lr_finds,
    _migrate_v4_submit,
    _migrate_v5_metric,
    _migrate_v6_run_metric,
    _migrate_v7_missing,
    _migrate_v8_targets,
    _migrate_v9_checksums,
    _migrate_v10_decision,
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
