"""What `faceshard build` shows while it runs: a line per start-up phase, then a live bar in videos.

The phase lines (manifest, lease, plan, prefect, ray, models) each say how long that phase took.
The bar listens to the flow's `BuildProgress` (see `faceshard.flows.progress`), which moves as each
video finishes: videos done / total, videos/s, ETA, failures, and shards. Everything goes to stderr,
so `build --json` keeps stdout for the summary. On a terminal the bar is redrawn in place; into a
file or pipe rich prints only its final state.
"""

from __future__ import annotations

import datetime as dt
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn

from faceshard.flows.progress import BuildProgress


class BuildProgressBar:
    """Videos done / total, videos/s, ETA, failures and shards so far, for one build."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]build"),
            BarColumn(),
            TextColumn("videos {task.fields[videos]}"),
            TextColumn("{task.fields[rate]} videos/s"),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("{task.fields[failures]}"),
            TextColumn("shards {task.fields[shards]}"),
            console=console,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> BuildProgressBar:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def line(self, text: str) -> None:
        """A line above the bar (the bar stays at the bottom)."""
        self._progress.console.print(text, highlight=False)

    def phase(self, name: str, seconds: float, detail: str) -> None:
        """One start-up phase done: its name, how long it took and what it found."""
        self.line(f"{name:<9}{seconds:6.1f} s  {escape(detail)}")

    def __call__(self, progress: BuildProgress) -> None:
        """Show `progress`: the flow calls this as the build starts and as each video finishes."""
        eta = progress.eta_seconds
        failures = progress.failures
        fields = {
            "videos": f"{progress.videos_done}/{progress.videos_total}",
            "shards": f"{progress.shards_done}/{progress.shards_total}",
            "rate": f"{rate:.1f}" if (rate := progress.videos_per_second) >= 1 else f"{rate:.2f}",
            "eta": "-:--:--" if eta is None else str(dt.timedelta(seconds=round(eta))),
            "failures": f"[red]failures {failures}[/]" if failures != "0" else "failures 0",
        }
        if self._task is None:
            self._task = self._progress.add_task("build", total=100, **fields)
        # Redrawn now, not at the next auto-refresh tick: each video shows up as it finishes.
        self._progress.update(self._task, completed=progress.percent, refresh=True, **fields)
