"""The terminal UI: every stage reports here (rich), and each message also goes to the run log.
It knows nothing of what it shows: tables come ready-made from the modules that own their data."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .backends.base import peak_memory_mb


class UI:
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        if not self.console.is_terminal:  # logs and CI: wide enough for the tables (compare's, with
            self.console.width = 140      # its intervals, needs about 130)
        self.log_path: Path | None = None

    def log(self, msg: str, style: str = "") -> None:
        self.console.print(msg, style=style or None, highlight=False)
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")

    @contextmanager
    def stage(self, description: str, total: int, done: int = 0):
        """A progress bar; the body calls update(advance, **stats) and the stats show beside it."""
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[stats]}"),
                            console=self.console, transient=False)
        start = time.time()
        with progress:
            task = progress.add_task(description, total=total, completed=done, stats="")

            def update(advance: int = 0, **stats):
                parts = [f"{k} {v}" for k, v in stats.items()] + [f"peak {peak_memory_mb() / 1024:.1f} GB"]
                progress.update(task, advance=advance, stats="  ".join(parts))

            yield update
        self.log(f"{description}: done in {time.time() - start:.0f}s")

    def table(self, title: str, header: list[str], rows: list[list[str]], caption: str = "") -> None:
        """Cells as given (plain text, never markup: "[33-60]" stays)."""
        t = Table(title=title, caption=caption or None)
        for col in header:
            t.add_column(col, justify="right")
        for r in rows:
            t.add_row(*[Text(c) for c in r])
        self.console.print(t)
