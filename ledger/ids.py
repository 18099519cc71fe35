"""Ids given on the command line: in full, or as any unique prefix, as git takes commit ids."""

from __future__ import annotations

from ledger.bag.matching import few
from ledger.errors import LedgerError


def match_id(ids: list[str], prefix: str, what: str, where) -> str:
    """The one id of `ids` that is `prefix` or starts with it; `what` (run, submission) and `where`
    (the ledger home) name them in the error."""
    if prefix in ids:
        return prefix
    matches = [i for i in ids if i.startswith(prefix)]
    if not matches:
        latest = ids[::-1]
        raise LedgerError(f"{what} {prefix!r}: no {what} id starts with it in {where}"
                          + (f" (latest: {few(latest)})" if latest else f" (the ledger has no {what}s)"))
    if len(matches) > 1:
        raise LedgerError(f"{what} {prefix!r} is ambiguous: {len(matches)} {what}s match: {few(matches)}")
    return matches[0]
