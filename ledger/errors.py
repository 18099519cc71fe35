"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class LedgerError(Exception):
    """A problem with the user's input or environment, not a bug in ledger."""

    exit_code = 1


class SpecError(LedgerError):
    """An experiment spec or a command-line value that does not validate."""

    exit_code = 2
