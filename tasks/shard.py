"""One shard on one worker: run its videos through the pipeline and commit the shard's rows.

A broken video becomes an `error` row and the shard still commits; only a fault of the shard itself
(storage unreachable, a model that cannot load) raises, which the flow retries and then records.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

from faceshard.config import BuildConfig
from faceshard.faults import maybe_fault
from faceshard.storage.commit import Output
from faceshard.storage.manifest import ShardPlan
from faceshard.storage.schema import rows_to_tables, table_schemas
from faceshard.tasks.pipeline import VideoProcessor, VideoResult

log = logging.getLogger(__name__)

_PROCESSORS: dict[str, VideoProcessor] = {}


def get_processor(cfg: BuildConfig) -> VideoProcessor:
    """The processor for `cfg` in this worker process: models load once, not per shard or video."""
    key = json.dumps(
        {
            "rows": cfg.row_affecting(),
            "device": cfg.runtime.device,
            "random": cfg.runtime.allow_random_weights,
        },
        sort_keys=True,
    )
    if key not in _PROCESSORS:
        _PROCESSORS.clear()  # one build per worker at a time: free the previous build's models
        _PROCESSORS[key] = VideoProcessor(cfg)
    return _PROCESSORS[key]


def weights_manifest(cfg: BuildConfig) -> dict[str, dict[str, Any]]:
    """Per role (detector, identity, depth, embed): name, source, fingerprint and whether random.

    The fingerprint must name the exact weights (file hashes, hub revisions, or `random`), resolved
    once in the driver before anything is skipped or written; the driver builds the processor once
    on the CPU for it. Workers load their own copy once per process.
    """
    return get_processor(
        cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"device": "cpu"})})
    ).weights


def process_shard(
    plan: ShardPlan, cfg: BuildConfig, output: Output, retry_failed: bool = False
) -> dict[str, Any]:
    """Process and commit one shard; returns its stats (also stored in the commit marker).

    With `retry_failed` and a committed shard, only the videos whose rows say `error` are processed
    again and the shard is re-committed atomically with every other video's rows unchanged.
    """
    started = time.perf_counter()
    processor = get_processor(cfg)
    videos = plan.videos
    replacing = retry_failed and output.is_committed(plan)
    if replacing:
        failed = set(output.failed_video_ids(plan.shard_id))
        videos = [video for video in plan.videos if video.video_id in failed]
    results: list[VideoResult] = []
    for video in videos:
        maybe_fault("video", video.video_id)
        results.append(processor(video, plan.shard_id))
    tables = rows_to_tables(
        [r.video for r in results],
        [row for r in results for row in r.faces],
        [row for r in results for row in r.identities],
        table_schemas(**processor.dims),
    )
    stats = _stats(plan, results, time.perf_counter() - started, replacing)
    maybe_fault("commit", str(plan.shard_id))
    marker = (
        output.replace_videos(plan, tables, stats) if replacing else output.commit_shard(plan, tables, stats)
    )
    stats["bytes"] = marker["bytes"]
    return stats


def _stats(plan: ShardPlan, results: list[VideoResult], seconds: float, replacing: bool) -> dict[str, Any]:
    stage_seconds: Counter[str] = Counter()
    for result in results:
        stage_seconds.update(result.seconds)
    return {
        "shard": plan.shard_id,
        "videos": len(results),
        "faces": sum(len(r.faces) for r in results),
        "identities": sum(len(r.identities) for r in results),
        "status_counts": dict(Counter(r.video["status"] for r in results)),
        "stage_seconds": {name: round(value, 3) for name, value in sorted(stage_seconds.items())},
        "seconds": round(seconds, 3),
        "retried_videos": len(results) if replacing else 0,
    }
