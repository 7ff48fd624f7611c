"""Where a running build stands: counted in the flow as each shard finishes, shown two ways.

* in-process listeners (the CLI's live bar) get a `BuildProgress` after every shard; `run_build`
  registers one with `reporting_to`, so no callable ever travels as a flow parameter;
* the Prefect UI gets a progress artifact, updated in place, and at the end a table artifact with
  one row per shard (a deployment run has no terminal to draw on), then the output's summary (the
  headline of `faceshard report`) as a Markdown and a table artifact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from faceshard.storage.manifest import ShardPlan

PROGRESS_KEY = "faceshard-build-progress"
SHARDS_KEY = "faceshard-build-shards"
SUMMARY_KEY = "faceshard-build-summary"
VIDEOS_KEY = "faceshard-build-videos"


@dataclass
class BuildProgress:
    """Shards and videos finished out of this run's total, and failures so far."""

    shards_total: int
    videos_total: int
    shards_done: int = 0
    videos_done: int = 0
    shards_failed: int = 0
    started: float = field(default_factory=time.monotonic)

    def shard_finished(self, plan: ShardPlan, failed: bool) -> None:
        """Count a finished shard; a failed one is finished too (its failure is recorded)."""
        self.shards_done += 1
        self.videos_done += len(plan.videos)
        self.shards_failed += int(failed)

    @property
    def percent(self) -> float:
        """Videos finished out of the total (shards when there are no videos), 0–100."""
        if self.videos_total:
            return 100.0 * self.videos_done / self.videos_total
        return 100.0 * self.shards_done / self.shards_total if self.shards_total else 100.0

    @property
    def videos_per_second(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.videos_done / elapsed if elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far; None until a shard has finished."""
        rate = self.videos_per_second
        return (self.videos_total - self.videos_done) / rate if rate > 0 else None


ProgressListener = Callable[[BuildProgress], None]

_listener: ContextVar[ProgressListener | None] = ContextVar("faceshard_progress_listener", default=None)


@contextmanager
def reporting_to(listener: ProgressListener | None) -> Iterator[None]:
    """Within the block, builds run in this process report their progress to `listener`."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def current_listener() -> ProgressListener | None:
    return _listener.get()


class ProgressArtifact:
    """The build's Prefect progress artifact, updated in place at most once per whole percent
    (865 shards are then ~100 API calls, not 865)."""

    def __init__(self, progress: BuildProgress) -> None:
        from prefect.artifacts import create_progress_artifact

        self._published = int(progress.percent)
        self._id = create_progress_artifact(
            progress=float(self._published),
            key=PROGRESS_KEY,
            description=f"{progress.shards_total} shards, {progress.videos_total} videos to process",
        )

    def __call__(self, progress: BuildProgress) -> None:
        from prefect.artifacts import update_progress_artifact

        percent = int(progress.percent)
        if percent > self._published:
            self._published = percent
            update_progress_artifact(self._id, float(percent))


def publish_shard_table(rows: list[dict[str, Any]]) -> None:
    """One row per shard of this run (committed or failed), in the order they finished, as a
    Prefect table artifact."""
    from prefect.artifacts import create_table_artifact

    failed = sum(row["status"] == "failed" for row in rows)
    create_table_artifact(
        table=rows,
        key=SHARDS_KEY,
        description=f"{len(rows)} shards processed by this run, {failed} failed",
    )


def shard_row(plan: ShardPlan, stats: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
    """The table artifact's row for one shard: what it produced, or why it failed."""
    stats = stats or {}
    return {
        "shard": plan.shard_id,
        "status": "failed" if error is not None else "committed",
        "videos": stats.get("videos", 0),
        "faces": stats.get("faces", 0),
        "identities": stats.get("identities", 0),
        "errors": stats.get("status_counts", {}).get("error", 0),
        "seconds": stats.get("seconds"),
        "bytes": stats.get("bytes"),
        "error": error,
    }


def publish_summary(uri: str, storage_options: dict[str, Any] | None, run_seconds: float) -> None:
    """The output's headline, statuses and failure reasons (Markdown) and its videos per split,
    label, method and status (table) as Prefect artifacts. Read from the committed rows (videos
    columns and markers, no faces pass); a failure here is logged, never the build's."""
    from prefect import get_run_logger
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from faceshard.storage.summary import summarize, summary_markdown, videos_by_group

    try:
        summary = summarize(uri, storage_options, faces=False)
        markdown = summary_markdown(summary) + f"\n\nThis run took {run_seconds:,.1f} s."
        create_markdown_artifact(markdown=markdown, key=SUMMARY_KEY, description=f"faceshard report {uri}")
        create_table_artifact(
            table=videos_by_group(summary.videos).to_dicts(),
            key=VIDEOS_KEY,
            description="committed videos, faces and identities per split, label, method and status",
        )
    except Exception as exc:  # the build's rows are committed whatever the report does
        get_run_logger().warning("build summary artifact not written: %s: %s", type(exc).__name__, exc)
