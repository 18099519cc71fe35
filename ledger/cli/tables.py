"""Tables that stay readable in an 80-column terminal.

Each column says how soon it may fold away: when the table would be wider than the console, the
columns with the highest `drop` go first (the rightmost of equals first), and a caption names what
was left out. Id columns are never wrapped nor cut (a cut id cannot be pasted back); other cells
fold onto more lines rather than vanish behind an ellipsis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table


def trial_verdict(trial, limit_bytes: int) -> str:
    """Whether a probe trial fits, in the words of every probe table and line."""
    return "yes" if trial.fits(limit_bytes) else ("OOM" if trial.out_of_memory else ("error" if trial.error else "no"))


def duration(seconds: float) -> str:
    """12.3 -> '12s', 754 -> '12m 34s', 45296 -> '12h 34m': every time the command line shows."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def shorten(text: str, width: int) -> str:
    """`text` cut to at most `width` characters at a space, never mid-word, with an ellipsis."""
    if len(text) <= width:
        return text
    cut = text[: width - 1].rsplit(" ", 1)[0] if " " in text[: width - 1] else text[: width - 1]
    return cut.rstrip(" ,;:") + "…"


@dataclass(frozen=True)
class Column:
    header: str
    drop: int = 0  # 0: always shown; higher: left out sooner when space is short
    is_id: bool = False  # shown whole, on one line
    justify: str = "left"


def _build(title: str | None, columns: Sequence[Column], rows: Sequence[Sequence[str]], keep: list[int],
           caption: str | None) -> Table:
    table = Table(title=title, caption=caption)
    for i in keep:
        column = columns[i]
        if column.is_id:
            longest = max((len(row[i]) for row in rows), default=0)
            table.add_column(column.header, no_wrap=True, min_width=max(longest, len(column.header)),
                             justify=column.justify)
        else:
            table.add_column(column.header, overflow="fold", justify=column.justify)
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    return table


def fit_table(console: Console, columns: Sequence[Column], rows: Sequence[Sequence[str]],
              title: str | None = None) -> Table:
    """A table of `rows` (strings, one per column) that fits `console.width`, or comes as close as
    its always-shown columns allow (rich then wraps their cells)."""
    keep = list(range(len(columns)))
    droppable = sorted((i for i, c in enumerate(columns) if c.drop), key=lambda i: (-columns[i].drop, -i))
    wide = console.options.update_width(100_000)
    table = _build(title, columns, rows, keep, None)
    for i in droppable:
        if Measurement.get(console, wide, table).maximum <= console.width:
            break
        keep.remove(i)
        table = _build(title, columns, rows, keep, None)
    hidden = [c.header for i, c in enumerate(columns) if i not in keep]
    if hidden:
        caption = f"not shown at this width: {', '.join(hidden)} (--json has every field)"
        table = _build(title, columns, rows, keep, caption)
    return table
