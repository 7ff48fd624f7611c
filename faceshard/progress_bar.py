"""The live progress bar of `faceshard build`: redrawn each time a shard commits (or fails).

It listens to the flow's `BuildProgress` (see `faceshard.flows.progress`) and draws on stderr, so
`build --json` keeps stdout for the summary. On a terminal the bar is redrawn in place; into a file
or pipe rich prints only its final state.
"""

from __future__ import annotations

import datetime as dt
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn

from faceshard.flows.progress import BuildProgress


class BuildProgressBar:
    """Shards and videos done / total, videos/s, ETA and failures so far, for one build."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]build"),
            BarColumn(),
            TextColumn("shards {task.fields[shards]}"),
            TextColumn("videos {task.fields[videos]}"),
            TextColumn("{task.fields[rate]} videos/s"),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("{task.fields[failures]}"),
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

    def __call__(self, progress: BuildProgress) -> None:
        """Show `progress`: the flow calls this as the build starts and after every shard."""
        eta = progress.eta_seconds
        fields = {
            "shards": f"{progress.shards_done}/{progress.shards_total}",
            "videos": f"{progress.videos_done}/{progress.videos_total}",
            "rate": f"{rate:.1f}" if (rate := progress.videos_per_second) >= 1 else f"{rate:.2f}",
            "eta": "-:--:--" if eta is None else str(dt.timedelta(seconds=round(eta))),
            "failures": (
                f"[red]failures {progress.shards_failed}[/]" if progress.shards_failed else "failures 0"
            ),
        }
        if self._task is None:
            self._task = self._progress.add_task("build", total=100, **fields)
        # Redrawn now, not at the next auto-refresh tick: each shard shows up as it commits.
        self._progress.update(self._task, completed=progress.percent, refresh=True, **fields)
