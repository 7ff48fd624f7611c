"""The build flow: plan shards, fan one Prefect task per shard out to Ray, collect the outcomes.

All work lives in `faceshard.tasks.shard.process_shard`; this module only wires it to Prefect and Ray.
One task per shard (not per video): Prefect servers are reported unstable past a few thousand
task runs, and a shard is the unit that commits. At most `runtime.max_in_flight` shards are
submitted at once (`flows.fanout`), and progress is reported as each one finishes (`flows.progress`).
"""

from __future__ import annotations

import os
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options

from faceshard.config import BuildConfig, RuntimeConfig, config_from_tree
from faceshard.flows.fanout import bounded_as_completed, in_flight_limit
from faceshard.flows.plan import dataset_weights, plan_output, shards_to_run
from faceshard.flows.progress import (
    BuildProgress,
    ProgressArtifact,
    current_listener,
    publish_shard_table,
    shard_row,
)
from faceshard.flows.runtime import ray_init_kwargs
from faceshard.storage.commit import Output
from faceshard.storage.manifest import Manifest, ShardPlan, load_manifest


@task(name="process-shard", retries=2, retry_delay_seconds=2, persist_result=False)
def process_shard_task(plan: ShardPlan, config: dict[str, Any], output: Output, retry_failed: bool) -> dict:
    """One shard on one Ray worker: per-video errors stay inside; only shard-level faults retry.

    The pipeline is imported here, on the worker: the driver plans and fans out without its libraries.
    """
    from faceshard.tasks.shard import process_shard

    return process_shard(plan, config_from_tree(config), output, retry_failed=retry_failed)


@flow(
    name="faceshard-build",
    persist_result=False,
    validate_parameters=False,
    # Deployments run on the cluster named by FACESHARD_RAY_ADDRESS (or a local one); `run_build`
    # swaps in a runner sized by the build's own runtime config.
    task_runner=RayTaskRunner(
        address=os.environ.get("FACESHARD_RAY_ADDRESS"), init_kwargs=ray_init_kwargs(RuntimeConfig())
    ),
)
def build_dataset(
    manifest: str,
    out: str,
    config: dict[str, Any],
    rebuild: bool = False,
    retry_failed: bool = False,
    roots: list[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    wait_s: float = 0.0,
    prune: bool = False,
) -> dict[str, Any]:
    """Plan → fan out → collect. Failed shards are recorded, never fatal to the build.

    `config` is a config tree over the preset it names (`{"preset": "mintime"}` is enough). The
    output's lease is held (and heartbeated) for the whole flow; another build on the same output
    waits up to `wait_s` for it, then fails naming this one. Only videos the output has not
    committed are processed, in new shards (see `storage.plan`); rows of videos missing from the
    manifest stay unless `prune`.
    """
    started = time.perf_counter()
    cfg = config_from_tree(config)
    videos = load_manifest(manifest, roots=roots)
    weights = dataset_weights(cfg)
    output = Output.open(
        out,
        config=cfg,
        weights=weights,
        rebuild=rebuild,
        storage_options=storage_options,
        wait_s=wait_s,
    )
    with output:
        return _build_under_lease(output, videos, cfg, config, weights, retry_failed, prune, started)


def _build_under_lease(
    output: Output,
    videos: Manifest,
    cfg: BuildConfig,
    config: dict[str, Any],
    weights: dict[str, Any],
    retry_failed: bool,
    prune: bool,
    started: float,
) -> dict[str, Any]:
    logger = get_run_logger()
    build_plan = plan_output(output, videos, cfg, prune=prune)
    output.apply_plan(build_plan)
    todo = shards_to_run(output, videos, build_plan, retry_failed)
    logger.info("%d shards planned, %d to process", build_plan.shards_total, len(todo))

    shard_stats, failed = run_shards(todo, config, output, retry_failed, cfg.runtime)

    return {
        "shards_total": build_plan.shards_total,
        "processed": len(shard_stats),
        "skipped": build_plan.shards_total - len(todo),
        "failed_shards": failed,
        "videos_total": build_plan.videos_total,
        "videos_processed": sum(s["videos"] for s in shard_stats),
        "videos_skipped": build_plan.videos_skipped,
        "not_in_manifest": build_plan.not_in_manifest,
        "pruned_videos": build_plan.pruned_videos,
        "videos": sum(s["videos"] for s in shard_stats),
        "faces": sum(s["faces"] for s in shard_stats),
        "identities": sum(s["identities"] for s in shard_stats),
        "status_counts": _sum_counts(s["status_counts"] for s in shard_stats),
        "detector_frames": sum(s.get("detector_frames", 0) for s in shard_stats),
        "detections_from_source": sum(s.get("detections_from_source", 0) for s in shard_stats),
        "seconds": round(time.perf_counter() - started, 2),
        "fingerprint": output.fingerprint,
        "random_weights": sorted(role for role, info in weights.items() if info.get("random")),
    }


def run_shards(
    plans: list[ShardPlan],
    config: dict[str, Any],
    output: Output,
    retry_failed: bool,
    runtime: RuntimeConfig,
) -> tuple[list[dict], list[dict]]:
    """Process `plans` on the cluster with at most `in_flight_limit(runtime)` submitted at once.

    Returns the stats of the committed shards and the failed ones (`{"shard", "error"}`, also
    recorded in the output), both in the order the shards finished. After every shard the
    progress goes to this process's listener (the CLI's bar) and the Prefect progress artifact;
    at the end a table artifact holds one row per shard.
    """
    logger = get_run_logger()
    limit = in_flight_limit(runtime)
    progress = BuildProgress(shards_total=len(plans), videos_total=sum(len(p.videos) for p in plans))
    listeners = [listener for listener in (current_listener(), ProgressArtifact(progress)) if listener]
    shard_task = process_shard_task.with_options(retries=runtime.task_retries)
    logger.info("%d shards to process, at most %d in flight", len(plans), limit)

    def submit(plan: ShardPlan) -> Any:
        # max_calls=0: Ray would otherwise end a GPU task's worker after every task, and with it the
        # models it loaded once (a reload per shard).
        with remote_options(num_cpus=runtime.cpus_per_shard, num_gpus=runtime.gpus_per_shard, max_calls=0):
            return shard_task.submit(plan, config, output, retry_failed)

    def report() -> None:
        for listener in listeners:
            listener(progress)

    report()
    shard_stats: list[dict] = []
    failed: list[dict] = []
    rows: list[dict] = []
    for plan, future in bounded_as_completed(plans, submit, limit):
        future.wait()
        stats, error = None, None
        if future.state.is_completed():
            stats = future.result()
            shard_stats.append(stats)
        else:
            error = _failure_message(future)
            output.record_failure(plan, error)
            failed.append({"shard": plan.shard_id, "error": error})
            logger.error("shard %05d failed: %s", plan.shard_id, error)
        rows.append(shard_row(plan, stats, error))
        progress.shard_finished(plan, failed=error is not None)
        report()
    publish_shard_table(rows)
    return shard_stats, failed


def _failure_message(future: Any) -> str:
    try:
        future.result()
    except BaseException as exc:  # the shard's own exception, re-raised by Prefect
        return f"{type(exc).__name__}: {exc}"
    return str(future.state.message or future.state.type)


def _sum_counts(counts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for item in counts:
        for key, value in item.items():
            total[key] = total.get(key, 0) + value
    return total
