"""Planning a build, shared by the flow and `build --dry-run`: manifest → fingerprint → plan.

Nothing here starts Prefect or Ray, and `dry_run` writes nothing. The manifest is read column-wise
(`load_manifest`) and the plan is computed on ids (`storage.plan`); `VideoTask`s are made only for
the shards a build actually runs.
"""

from __future__ import annotations

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
    """ShardPlans (VideoTasks from the current manifest) of the pending shards, plus retried ones."""
    wanted = set(plan.todo) | (set(retry_shards(output, manifest, plan)) if retry_failed else set())
    rows = plan.shards.filter(pl.col("shard").is_in(sorted(wanted))).sort("shard", maintain_order=True)
    return manifest.shard_plans(rows)


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
    summary = {"dry_run": True, **plan.summary(), "fingerprint": output.fingerprint}
    if retry_failed:
        summary["retry_shards"] = retry_shards(output, videos, plan) if keep else []
    return summary
