"""Where a running build stands: counted in the driver as each video finishes, shown two ways.

* in-process listeners (the CLI's live bar) get a `BuildProgress` as each video finishes (and after
  every shard); `run_build` registers one with `reporting_to`, so no callable ever travels as a
  flow parameter;
* the Prefect UI gets a progress artifact, updated in place, and at the end a table artifact with
  one row per shard (a deployment run has no terminal to draw on), then the output's summary (the
  headline of `faceshard report`) as a Markdown and a table artifact.

Workers tell the driver of each finished video through a `VideoInbox`, a small Ray actor the
driver polls (`watch_videos`); the per-shard work itself only gets a plain callback.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
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
INBOX_POLL_S = 0.5


@dataclass
class BuildProgress:
    """Videos and shards finished out of this run's total, and failures so far.

    A video counts once however often it is reported (a retried shard reports its videos again);
    a shard that finished counts all its videos, a failed shard's as failures.
    """

    shards_total: int
    videos_total: int
    shards_done: int = 0
    videos_done: int = 0
    shards_failed: int = 0
    videos_failed: int = 0
    started: float = field(default_factory=time.monotonic)
    _seen: dict[int, set[str]] = field(default_factory=dict, repr=False)  # shards still running
    _closed: set[int] = field(default_factory=set, repr=False)  # shards finished: late reports ignored
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def video_finished(self, shard_id: int, video_id: str, failed: bool) -> None:
        """Count one finished video (an `error` row is `failed`)."""
        with self._lock:
            self._count(shard_id, video_id, failed)

    def shard_finished(self, plan: ShardPlan, failed: bool) -> None:
        """Count a finished shard and any of its videos not reported yet; a failed shard's
        unreported videos are failures (its failure is recorded)."""
        with self._lock:
            self.shards_done += 1
            self.shards_failed += int(failed)
            for video in plan.videos:
                self._count(plan.shard_id, video.video_id, failed)
            self._seen.pop(plan.shard_id, None)  # memory stays that of the shards in flight
            self._closed.add(plan.shard_id)

    def _count(self, shard_id: int, video_id: str, failed: bool) -> None:
        if shard_id in self._closed:
            return
        seen = self._seen.setdefault(shard_id, set())
        if video_id not in seen:
            seen.add(video_id)
            self.videos_done += 1
            self.videos_failed += int(failed)

    @property
    def failures(self) -> str:
        """What the bar shows: failed videos (error rows and the videos of failed shards), and the
        failed shards among them."""
        shards = (
            f" ({self.shards_failed} shard{'s' * (self.shards_failed != 1)})" if self.shards_failed else ""
        )
        return f"{self.videos_failed}{shards}"

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
        """Seconds left at the rate so far; None until a video has finished."""
        rate = self.videos_per_second
        return (self.videos_total - self.videos_done) / rate if rate > 0 else None


class VideoInbox:
    """A Ray actor (zero CPUs) that workers tell of each finished video; the driver takes the lot.

    It also carries the driver's stop back: a shard that starts after `stop()` does nothing (the
    build is ending; its videos stay pending for the next one).
    """

    def __init__(self) -> None:
        self._items: list[tuple[int, str, bool]] = []
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def stopped(self) -> bool:
        return self._stopped

    def put(self, shard_id: int, video_id: str, failed: bool) -> None:
        self._items.append((shard_id, video_id, failed))

    def take(self) -> list[tuple[int, str, bool]]:
        items, self._items = self._items, []
        return items


@contextmanager
def watch_videos(
    progress: BuildProgress, report: Callable[[], None], stopping: Callable[[], bool] | None = None
) -> Iterator[Any]:
    """Yield a `VideoInbox` handle for the workers; while the block runs, what they put in it is
    counted into `progress` and reported (`report()`, from a thread in this context), and once
    `stopping()` is true the inbox tells shards that have not started to do nothing."""
    import ray

    inbox = ray.remote(num_cpus=0)(VideoInbox).remote()
    done = threading.Event()

    def poll() -> None:
        told = False
        while not done.wait(INBOX_POLL_S):
            try:
                if not told and stopping is not None and stopping():
                    ray.get(inbox.stop.remote(), timeout=30)
                    told = True
                items = ray.get(inbox.take.remote(), timeout=30)
            except Exception:  # the build goes on without per-video counts; shards still report
                return
            for shard_id, video_id, failed in items:
                progress.video_finished(shard_id, video_id, failed)
            if items:
                report()

    watcher = threading.Thread(target=contextvars.copy_context().run, args=(poll,), daemon=True)
    watcher.start()
    try:
        yield inbox
    finally:
        done.set()
        watcher.join(timeout=INBOX_POLL_S * 4)
        with contextlib.suppress(Exception):  # the cluster is already gone (a SIGTERM to the group)
            ray.kill(inbox)


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
