"""One shard on one worker: run its videos through the pipeline and commit the shard's rows.

A broken video becomes an `error` row and the shard still commits; only a fault of the shard itself
(storage unreachable, a model that cannot load) raises, which the flow retries and then records.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from faceshard.config import BuildConfig
from faceshard.faults import maybe_fault
from faceshard.models.threads import limit_threads
from faceshard.records import VideoTask
from faceshard.storage.commit import Output
from faceshard.storage.detections import detections_table
from faceshard.storage.manifest import ShardPlan
from faceshard.storage.schema import rows_to_tables, table_schemas
from faceshard.tasks.pipeline import VideoProcessor, VideoResult
from faceshard.tasks.source_store import load_committed, memory_rows
from faceshard.tasks.sources import SourceMemory, source_groups

log = logging.getLogger(__name__)

VideoListener = Callable[[VideoTask, VideoResult], None]
"""Told of each video of a shard as it finishes (the driver's progress bar counts videos with it)."""

_PROCESSORS: dict[str, VideoProcessor] = {}


def get_processor(cfg: BuildConfig) -> VideoProcessor:
    """The processor for `cfg` in this worker process: models load once, not per shard or video."""
    key = json.dumps(
        {
            "rows": cfg.model_dump(mode="json", exclude={"runtime", "preset"}),  # weights paths too
            "device": cfg.runtime.device,
            "random": cfg.runtime.allow_random_weights,
        },
        sort_keys=True,
    )
    if key in _PROCESSORS and _PROCESSORS[key].load_failed():
        del _PROCESSORS[key]  # a model that failed to load is tried again by the next shard
    if key not in _PROCESSORS:
        _PROCESSORS.clear()  # one build per worker at a time: free the previous build's models
        limit_threads(cfg.runtime.cpus_per_shard)
        _PROCESSORS[key] = VideoProcessor(cfg)
    return _PROCESSORS[key]


def process_shard(
    plan: ShardPlan,
    cfg: BuildConfig,
    output: Output,
    retry_failed: bool = False,
    on_video: VideoListener | None = None,
) -> dict[str, Any]:
    """Process and commit one shard; returns its stats (also stored in the commit marker).

    With `retry_failed` and a committed shard, only the videos whose rows say `error` are processed
    again and the shard is re-committed atomically with every other video's rows unchanged.
    `on_video` is called after each video (a failing listener is logged, never fatal).
    """
    started = time.perf_counter()
    processor = get_processor(cfg)
    load_seconds = time.perf_counter() - started  # non-zero only for a worker's first shard of a build
    videos = plan.videos
    replacing = retry_failed and output.is_committed(plan)
    committed_here: dict[str, int] = {}
    if replacing:
        failed = set(output.failed_video_ids(plan.shard_id))
        videos = [video for video in plan.videos if video.video_id in failed]
        committed_here = {v.video_id: plan.shard_id for v in plan.videos if v.video_id not in failed}
    aware = cfg.sources.aware
    # Sources committed before (by an earlier build, or in this shard when retrying its failed videos):
    # read back from the output once each, before any video runs.
    where = {v.source: committed_here.get(v.source, plan.sources.get(v.source)) for v in videos if v.source}
    where = {source: shard for source, shard in where.items() if shard is not None}
    committed = load_committed(output, where) if aware and where else {}
    kept: list[dict[str, Any]] = []
    results = process_videos(processor, videos, plan.shard_id, aware, on_video, committed, kept)
    tables = rows_to_tables(
        [r.video for r in results],
        [row for r in results for row in r.faces],
        [row for r in results for row in r.identities],
        table_schemas(**processor.dims),
    )
    if aware:
        tables["detections"] = detections_table(kept)
    stats = _stats(plan, results, time.perf_counter() - started, replacing, load_seconds)
    stats["committed_sources"] = len(committed)
    maybe_fault("commit", str(plan.shard_id))
    marker = (
        output.replace_videos(plan, tables, stats) if replacing else output.commit_shard(plan, tables, stats)
    )
    stats["bytes"] = marker["bytes"]
    return stats


def process_videos(
    processor: VideoProcessor,
    videos: list[VideoTask],
    shard_id: int,
    source_aware: bool,
    on_video: Callable[[VideoTask, VideoResult], None] | None = None,
    committed: Mapping[str, SourceMemory | str] | None = None,
    kept: list[dict[str, Any]] | None = None,
) -> list[VideoResult]:
    """Every video's result, each told to `on_video` as it finishes (progress). Source-aware: each
    source of the shard runs right before its fakes, which reuse what it left (`SourceMemory`, held for
    the group only); otherwise in plan order, alone.

    `committed`: sources committed by an earlier build (id → the memory read back from the output, or
    why it cannot be reused), which their fakes here reuse likewise. `kept` receives the `detections`
    side-table rows of every source processed here (real videos without a source too: fakes of them
    may come in a later build)."""
    results: list[VideoResult] = []
    committed = committed or {}
    groups = source_groups(videos) if source_aware else [[video] for video in videos]
    for group in groups:
        lead = group[0]
        reused = committed.get(lead.source) if source_aware and lead.source else None
        memory = _group_memory(group, source_aware, reused)
        for video in group:
            maybe_fault("video", video.video_id)
            # alone, a video is processed as it always was (`processor(video, shard_id)`)
            results.append(
                processor(video, shard_id) if memory is None else processor(video, shard_id, memory)
            )
            if isinstance(reused, str) and results[-1].video.get("detections_note") is None:
                results[-1].video["detections_note"] = f"source {lead.source} not reused: {reused}"
            if on_video is not None:
                try:
                    on_video(video, results[-1])
                except Exception:
                    log.warning("progress listener failed for video %s", video.video_id, exc_info=True)
        if kept is not None and memory is not None and memory is not reused and memory.usable:
            kept.extend(memory_rows(memory))
    return results


def _group_memory(
    group: list[VideoTask], source_aware: bool, reused: SourceMemory | str | None
) -> SourceMemory | None:
    """The memory a group's videos share: a committed source's (a fake alone in this shard), a new one
    its source fills (a source with fakes, or a real video whose fakes may come later), or none."""
    if isinstance(reused, SourceMemory):
        return reused
    lead = group[0]
    if len(group) > 1 or (source_aware and lead.source is None and lead.label == 0):
        return SourceMemory(lead.video_id)
    return None


def _stats(
    plan: ShardPlan, results: list[VideoResult], seconds: float, replacing: bool, load_seconds: float
) -> dict[str, Any]:
    stage_seconds: Counter[str] = Counter({"load_models": load_seconds})
    for result in results:
        stage_seconds.update(result.seconds)
    return {
        "shard": plan.shard_id,
        "videos": len(results),
        "faces": sum(len(r.faces) for r in results),
        "identities": sum(len(r.identities) for r in results),
        "detector_frames": sum(r.detector_frames for r in results),
        "detections_from_source": sum(r.video.get("detections") == "source" for r in results),
        "status_counts": dict(Counter(r.video["status"] for r in results)),
        "stage_seconds": {name: round(value, 3) for name, value in sorted(stage_seconds.items())},
        "seconds": round(seconds, 3),
        "retried_videos": len(results) if replacing else 0,
    }
