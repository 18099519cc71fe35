"""`ledger runs --rebuild`: a ledger re-recorded from its run folders, after ledger.db was lost.

Every finished run folder keeps what its row held: `summary.json` (the figures, seeds, split,
fingerprint), `spec.yaml` (the resolved entry) and `checksums.json` (the sums of its files). A
folder whose run the ledger already holds is left alone; a partial one (`<id>.partial`, a run
interrupted mid-way) has no summary and is not a finished run: `train` resumes it once its plan
owes it again. Submissions, probes and lr-finds are not in the folders and stay lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import yaml

from ledger.store.rows import RunStatus, RunSummary
from ledger.runs import artifacts
from ledger.runs.checksums import read_checksums
from ledger.runs.recording import RunResult, record_found
from ledger.store.lost_ledger import run_folders


@dataclass(frozen=True)
class Rebuilt:
    recorded: list[str]  # run ids re-recorded
    skipped: list[tuple[str, str]]  # (folder, why) of folders that were not


def rebuild(store) -> Rebuilt:
    """Record every finished run folder of the home that the ledger does not hold."""
    known = {row.id for row in store.runs()}
    recorded, skipped = [], []
    for folder in run_folders(store.home):
        where = str(folder.relative_to(store.home))
        if folder.name in known:
            continue
        if folder.name.endswith(".partial"):
            skipped.append((where, "unfinished (a partial run): train resumes or restarts it"))
            continue
        try:
            summary = RunSummary.from_dict(artifacts.read_json(folder / artifacts.SUMMARY))
            entry = dict(yaml.safe_load((folder / artifacts.SPEC).read_text())["model"]) | {"accum": summary.accum}
        except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError) as e:
            skipped.append((where, f"unreadable summary or spec ({type(e).__name__})"))
            continue
        finished = datetime.fromtimestamp((folder / artifacts.SUMMARY).stat().st_mtime, timezone.utc)
        started = finished - timedelta(seconds=summary.train_seconds or 0)
        result = RunResult(folder.name, RunStatus.DONE, folder=folder, summary=summary,
                           resumed_epochs=summary.resumed_epochs, checksums=read_checksums(folder))
        record_found(store, result, summary, entry, _stamp(started), _stamp(finished))
        recorded.append(folder.name)
    return Rebuilt(recorded, skipped)


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")
