"""A bag is whole or says why not: the runs of the spec that a bag would leave out without anyone
choosing to.

Two kinds would otherwise leave a bag without a word: runs still training (a `ledger train` of the
experiment is running now, so the bag would be made of whichever runs happened to be done: its
lock says so even between two runs), and
done runs whose folder was deleted (housekeeping marks them `missing`). Either is refused with the
run ids; `--allow-missing` is the explicit choice to bag what there is, and the runs left out are
then listed with the reason.
"""

from __future__ import annotations

from ledger.store.rows import RunStatus
from ledger.errors import LedgerError
from ledger.runs.lock import training_now
from ledger.spec.fingerprint import run_fingerprint


def left_out(spec, store) -> list[tuple[str, str]]:
    """(run id, reason) for every run of the spec's current recipes that is still training or
    whose folder is gone."""
    current = {run_fingerprint(spec, model) for model in spec.models}
    found = []
    for row in store.runs(spec.name):
        if row.fingerprint not in current:
            continue  # another recipe: never bagged in any case
        if row.status == RunStatus.RUNNING:
            found.append((row.id, "still training"))
        elif row.status == RunStatus.MISSING:
            found.append((row.id, row.error or "its run folder is gone"))
    return found


def check_whole(spec, store, allow_missing: bool = False) -> list[tuple[str, str]]:
    """The runs left out, when `allow_missing`; else one line naming them. A `train` of the
    experiment holding its lock counts too, between two runs (when no row is `running`) and for
    the runs it has yet to start."""
    missing = left_out(spec, store)
    holder = training_now(store.home, spec.name)
    if (missing or holder) and not allow_missing:
        training = [run_id for run_id, why in missing if why == "still training"]
        gone = [run_id for run_id, why in missing if why != "still training"]
        trainer = f"a `ledger train` of it is running ({holder})" if holder else "a `ledger train` of it is running"
        parts = ([f"run(s) {', '.join(training)} still training ({trainer})"] if training
                 else [f"the runs {trainer} has yet to finish"] if holder else []) \
            + ([f"done run(s) {', '.join(gone)} whose folder is gone"] if gone else [])
        raise LedgerError(f"experiment {spec.name!r}: the bag would leave out {' and '.join(parts)}; wait for the "
                          f"training or restore the folders, or pass --allow-missing to bag the runs there are")
    return missing
