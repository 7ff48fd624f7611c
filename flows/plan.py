"""Planning a build, shared by the flow and `build --dry-run`: manifest → fingerprint → plan.

Nothing here starts Prefect or Ray, and `dry_run` writes nothing. The manifest is read column-wise
(`load_manifest`) and the plan is computed on ids (`storage.plan`); `VideoTask`s are made only for
the shards a build actually runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

import polars as pl

from faceshard.config import BuildConfig
from faceshard.storage.commit import Output, shard_fingerprint_of
from faceshard.storage.manifest import Manifest, ShardPlan, load_manifest
from faceshard.storage.plan import BuildPlan, PriorPlan, plan_build


def dataset_weights(cfg: BuildConfig) -> dict[str, dict[str, Any]]:
    """Every model's weights info for the dataset fingerprint: the one place a build asks for it.

    Read from the weights' files without loading any model (`tasks.pipeline.weights_manifest`);
    imported here so planning alone never imports the models' libraries.
    """
    from faceshard.tasks.pipeline import weights_manifest

    return weights_manifest(cfg)


def plan_output(
    output: Output, manifest: Manifest, cfg: BuildConfig, *, prune: bool, keep: bool = True
) -> BuildPlan:
    """The build's plan over what `output` holds (nothing when `keep` is False: a new or rebuilt output)."""
    prior = output.prior_plan() if keep else PriorPlan()
    sources = manifest.frame["source"] if cfg.sources.aware and "source" in manifest.frame.columns else None
    if sources is not None and sources.is_null().all():
        sources = None  # nothing links fakes to sources: per-video planning, the same shards as ever
    return plan_build(manifest.video_ids, prior, cfg.shard_size, prune=prune, sources=sources)


def retry_shards(output: Output, manifest: Manifest, plan: BuildPlan) -> list[int]:
    """Committed shards holding `error` videos that `--retry-failed` can redo in place.

    A shard qualifies when all its videos are still in the manifest (their paths are needed) and its
    fingerprint is of the current kind (shards adopted from an older output are left as they are).
    """
    committed = set(plan.committed)
    candidates = [shard for shard in output.shards_with_errors() if shard in committed]
    if not candidates:
        return []
    rows = plan.shards.filter(pl.col("shard").is_in(candidates))
    listed = rows["video_id"].is_in(manifest.video_ids.implode())
    out = []
    for (shard,), group in rows.with_columns(listed=listed).group_by("shard", maintain_order=True):
        ids = group["video_id"].to_list()
        current = shard_fingerprint_of(output.fingerprint, shard, ids) == plan.recorded.get(shard)
        if group["listed"].all() and current:
            out.append(shard)
    return sorted(out)


def shards_to_run(output: Output, manifest: Manifest, plan: BuildPlan, retry_failed: bool) -> list[ShardPlan]:
    """ShardPlans (VideoTasks from the current manifest) of the pending shards, plus retried ones, each
    told where the sources of its fakes that other shards committed already are (`ShardPlan.sources`)."""
    wanted = set(plan.todo) | (set(retry_shards(output, manifest, plan)) if retry_failed else set())
    rows = plan.shards.filter(pl.col("shard").is_in(sorted(wanted))).sort("shard", maintain_order=True)
    shards = manifest.shard_plans(rows)
    outside = {shard.shard_id: _sources_elsewhere(shard) for shard in shards}
    if not any(outside.values()):
        return shards
    where = plan.committed_shard_of(sorted(set().union(*outside.values())))
    return [
        replace(shard, sources={s: where[s] for s in sorted(outside[shard.shard_id]) if s in where})
        for shard in shards
    ]


def _sources_elsewhere(shard: ShardPlan) -> set[str]:
    ids = {video.video_id for video in shard.videos}
    return {video.source for video in shard.videos if video.source and video.source not in ids}


PhaseListener = Callable[[str, float, str], None]
"""Told `(phase, seconds, detail)` as each start-up phase of a build ends (the CLI prints a line)."""


@dataclass
class PreparedBuild:
    """What a build settles before any server starts: the manifest, the weights, the output (its
    lease held) and the plan. `close()` releases the lease."""

    videos: Manifest
    cfg: BuildConfig
    weights: dict[str, dict[str, Any]]
    output: Output
    plan: BuildPlan
    todo: list[ShardPlan]
    started: float

    def close(self) -> None:
        self.output.close()

    def __enter__(self) -> PreparedBuild:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_handed_in: ContextVar[PreparedBuild | None] = ContextVar("faceshard_prepared_build", default=None)


@contextmanager
def handing_in(prepared: PreparedBuild) -> Iterator[None]:
    """Within the block, the build flow run in this process processes `prepared` (validated, its
    lease held and planned before the servers started) instead of opening the output again."""
    token = _handed_in.set(prepared)
    try:
        yield
    finally:
        _handed_in.reset(token)


def handed_in() -> PreparedBuild | None:
    return _handed_in.get()


def prepare_build(
    manifest: str,
    out: str,
    cfg: BuildConfig,
    *,
    rebuild: bool = False,
    retry_failed: bool = False,
    roots: list[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    wait_s: float = 0.0,
    prune: bool = False,
    on_phase: PhaseListener | None = None,
    started: float | None = None,
    whole: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> PreparedBuild:
    """Validate, take the output's lease and plan: everything that can refuse a build or find it has
    nothing to do, without Prefect, Ray or a model. A busy output raises OutputBusy naming its holder.
    Taking the lease and writing the plan run inside `whole()` (a Ctrl-C waits for their end).
    """
    started = time.perf_counter() if started is None else started
    tell = on_phase or (lambda phase, seconds, detail: None)
    clock = time.perf_counter()
    videos = load_manifest(manifest, roots=roots)
    weights = dataset_weights(cfg)
    tell("manifest", time.perf_counter() - clock, f"{len(videos)} videos; weights found")
    clock = time.perf_counter()
    with whole():
        output = Output.open(
            out,
            config=cfg,
            weights=weights,
            rebuild=rebuild,
            storage_options=storage_options,
            wait_s=wait_s,
            lease_ttl_s=cfg.runtime.lease_ttl_s,
            lease_heartbeat_s=cfg.runtime.lease_heartbeat_s,
            warnings=build_warnings(weights),
        )
    tell("lease", time.perf_counter() - clock, f"{out} held by this build")
    try:
        clock = time.perf_counter()
        with whole():
            plan = plan_output(output, videos, cfg, prune=prune)
            output.apply_plan(plan)
        todo = shards_to_run(output, videos, plan, retry_failed)
        todo_videos = sum(len(shard.videos) for shard in todo)
        detail = (
            f"{plan.shards_total} shards; {len(todo)} to process ({todo_videos} videos)"
            if todo
            else f"{plan.shards_total} shards, all committed: nothing to do"
        )
        tell("plan", time.perf_counter() - clock, detail)
    except BaseException:
        output.close()
        raise
    return PreparedBuild(videos, cfg, weights, output, plan, todo, started)


def build_summary(
    prepared: PreparedBuild,
    shard_stats: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    *,
    startup_seconds: float = 0.0,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """The build's summary: `seconds` is wall time from the start, `startup_seconds` its start-up part."""
    plan = prepared.plan
    before = set(plan.committed)
    return {
        "shards_total": plan.shards_total,
        "shards_committed": len(before) + sum(s["shard"] not in before for s in shard_stats),
        "processed": len(shard_stats),
        "skipped": plan.shards_total - len(prepared.todo),
        "failed_shards": failed,
        "videos_total": plan.videos_total,
        "videos_processed": sum(s["videos"] for s in shard_stats),
        "videos_skipped": plan.videos_skipped,
        "not_in_manifest": plan.not_in_manifest,
        "pruned_videos": plan.pruned_videos,
        "videos": sum(s["videos"] for s in shard_stats),
        "faces": sum(s["faces"] for s in shard_stats),
        "identities": sum(s["identities"] for s in shard_stats),
        "status_counts": _sum_counts(s["status_counts"] for s in shard_stats),
        "detector_frames": sum(s.get("detector_frames", 0) for s in shard_stats),
        "detections_from_source": sum(s.get("detections_from_source", 0) for s in shard_stats),
        "seconds": round(time.perf_counter() - prepared.started, 2),
        "startup_seconds": round(startup_seconds, 2),
        "fingerprint": prepared.output.fingerprint,
        "random_weights": random_roles(prepared.weights),
        "warnings": list(warnings if warnings is not None else build_warnings(prepared.weights)),
    }


def random_roles(weights: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(role for role, info in weights.items() if info.get("random"))


def build_warnings(weights: dict[str, dict[str, Any]]) -> list[str]:
    """The build's warnings, each once (workers load models quietly; the driver says it here)."""
    roles = random_roles(weights)
    if not roles:
        return []
    names = ", ".join(f"{role} ({weights[role].get('name', role)})" for role in roles)
    return [
        f"RANDOM WEIGHTS for {names}: their weights are unreachable, so these models use a seeded "
        "random init; rows are marked random and their features are NOT meaningful."
    ]


def _sum_counts(counts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for item in counts:
        for key, value in item.items():
            total[key] = total.get(key, 0) + value
    return total


def dry_run(
    manifest: str,
    out: str,
    cfg: BuildConfig,
    *,
    rebuild: bool = False,
    prune: bool = False,
    retry_failed: bool = False,
    roots: list[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What `build` would do, computed without processing or writing anything."""
    videos = load_manifest(manifest, roots=roots)
    weights = dataset_weights(cfg)
    output, keep = Output.preview(
        out, config=cfg, weights=weights, rebuild=rebuild, storage_options=storage_options
    )
    plan = plan_output(output, videos, cfg, prune=prune, keep=keep)
    summary = {"dry_run": True, **plan.summary(), **videos.path_problems(storage_options)}
    summary["fingerprint"] = output.fingerprint
    if retry_failed:
        summary["retry_shards"] = retry_shards(output, videos, plan) if keep else []
    return summary
