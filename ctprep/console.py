"""Terminal output shared by the three CLIs: progress bars with rate and ETA, and summary tables."""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

T = TypeVar("T")
NUMERIC_TEXT = re.compile(r"-|[-+]?[\d,]*\.?\d+( ?%| : 1)?")
PLAIN_WIDTH = 120  # columns when output is not a terminal (and $COLUMNS is unset)


def make_console(stderr: bool = False) -> Console:
    """A console that degrades to plain text when not a terminal (CI, pipes)."""
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PLAIN_WIDTH  # logs and captured output: wide enough that tables keep their headers
    return console


@contextmanager
def progress_bar(unit: str = "it", console: Console | None = None) -> Iterator[Progress]:
    """A rich Progress with count, rate (``unit``/s), elapsed time and ETA; add tasks with ``.add_task``."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console or make_console(stderr=True),
        transient=False,
    )
    progress.unit = unit  # type: ignore[attr-defined]
    with progress:
        yield progress


def rate_text(done: float, seconds: float, unit: str) -> str:
    """'12.3 unit/s' (or '' before the first item)."""
    return f"{done / seconds:.1f} {unit}/s" if seconds > 0 and done > 0 else ""


def ratio_text(value: float, missing: str = "no lesion slices", digits: int = 3) -> str:
    """A ratio such as empty:lesion with ``digits`` decimals ('1.776'), or ``missing`` where it is NaN (no lesion slice
    to divide by). Summaries say 'no lesion slices'; table cells use ``missing="-", digits=2``."""
    return missing if value != value else f"{value:.{digits}f}"


def echo(text: str, err: bool = False, style: str | None = None) -> None:
    """Print ``text`` as it is (no markup) and a newline, to stderr with ``err``; in ``style`` on a terminal."""
    make_console(stderr=err).print(text, style=style, markup=False, emoji=False)


def print_problems(warnings: Iterable[str] = (), failed: Iterable[str] = ()) -> None:
    """Print each ``warning: line`` (yellow on a terminal), then each ``failed: line`` (red), to stderr; the lines
    are printed as they are (a path holding ``[tag]`` is not read as markup). The one way the tools warn."""
    err = make_console(stderr=True)
    for line in warnings:
        err.print(f"warning: {line}", style="yellow", markup=False, emoji=False, highlight=False)
    for line in failed:
        err.print(f"failed: {line}", style="red", markup=False, emoji=False, highlight=False)


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "it",
          console: Console | None = None) -> Iterator[T]:
    """Iterate ``items`` with a progress bar showing rate and ETA."""
    import time

    total = total if total is not None else (len(items) if isinstance(items, Sequence) else None)
    with progress_bar(unit, console) as progress:
        task = progress.add_task(description, total=total, rate="", status="")
        start = time.perf_counter()
        for done, item in enumerate(items, start=1):
            yield item
            progress.update(task, advance=1, rate=rate_text(done, time.perf_counter() - start, unit))


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]],
                console: Console | None = None) -> None:
    """Print a compact table; numbers right-aligned."""
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    rows = [list(r) for r in rows]
    for i, name in enumerate(columns):
        numeric = all(_numeric(r[i]) for r in rows) if rows else False
        table.add_column(name, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(_fmt(v) for v in row))
    (console or make_console()).print(table)


def _numeric(value: object) -> bool:
    """Numbers, and text that reads as one ('1.75', '-', '42 %'), are right-aligned."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    return isinstance(value, str) and bool(NUMERIC_TEXT.fullmatch(value.strip()))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def human_bytes(n_bytes: float) -> str:
    """'12.3 MiB' style size."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return ""


def print_files(files: Iterable[tuple[str, object]]) -> None:
    """Print ``what: path`` per written file, as the commands list their outputs."""
    for what, path in files:
        print(f"{what}: {path}")
