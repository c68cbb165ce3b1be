"""The terminal UI: every stage reports here (rich), and each message also goes to the run log."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .backends.base import peak_memory_mb
from .evaluation.check import describe
from .filters import FILTERS


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

    def iterations_table(self, rows: list[dict]) -> None:
        t = Table(title="ISARA iterations")
        for col in ["iteration", "generated", "kept", *[f"-{f}" for f in FILTERS], "train loss", "lr", "minutes"]:
            t.add_column(col, justify="right")
        for r in rows:
            t.add_row(str(r["iteration"]), str(r["generated"]), str(r["kept"]),
                      *[str(r["removed"].get(f, 0)) for f in FILTERS],
                      f"{r['train_loss_first']:.2f}->{r['train_loss_last']:.2f}", f"{r['learning_rate']:.2e}",
                      f"{r['seconds'] / 60:.1f}")
        self.console.print(t)

    def check_table(self, rows: list[dict]) -> None:
        t = Table(title="Built-in check (held-out prompts, greedy)", caption="in brackets: the 95% Wilson interval")
        for col in ["model", "harmful refused", "benign answered"]:
            t.add_column(col, justify="right")
        for r in rows:
            t.add_row(r["model"], describe(r, "harmful_refused"), describe(r, "benign_answered"))
        self.console.print(t)
