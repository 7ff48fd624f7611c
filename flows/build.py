"""The build flow: plan shards, fan one Prefect task per shard out to Ray, collect the outcomes.

All work lives in `faceshard.tasks.shard.process_shard`; this module only wires it to Prefect and Ray.
One task per shard (not per video): Prefect servers are reported unstable past a few thousand
task runs, and a shard is the unit that commits. At most `runtime.max_in_flight` shards are
submitted at once (`flows.fanout`), and progress is reported as each one finishes (`flows.progress`).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options

from faceshard.config import RuntimeConfig, config_from_tree
from faceshard.flows import interrupt
from faceshard.flows.fanout import bounded_as_completed, in_flight_limit
from faceshard.flows.plan import PreparedBuild, build_summary, handed_in, prepare_build
from faceshard.flows.progress import (
    BuildProgress,
    ProgressArtifact,
    current_listener,
    publish_shard_table,
    publish_summary,
    shard_row,
    watch_videos,
)
from faceshard.flows.runtime import ray_init_kwargs
from faceshard.storage.commit import Output
from faceshard.storage.manifest import ShardPlan


@task(name="process-shard", retries=2, retry_delay_seconds=2, persist_result=False, cache_policy=NO_CACHE)
def process_shard_task(
    plan: ShardPlan, config: dict[str, Any], output: Output, retry_failed: bool, inbox: Any = None
) -> dict:
    """One shard on one Ray worker: per-video errors stay inside; only shard-level faults retry.

    The pipeline is imported here, on the worker: the driver plans and fans out without its libraries.
    Each finished video is put in the driver's `inbox` (a `VideoInbox` actor), without waiting; a
    shard that starts after the user stopped the build returns `{"shard": id, "stopped": True}`.
    """
    from faceshard.models.registry import random_weights_told_elsewhere
    from faceshard.tasks.shard import process_shard

    if inbox is not None and build_stopped(inbox):
        return {"shard": plan.shard_id, "stopped": True}

    def tell(video: Any, result: Any) -> None:
        inbox.put.remote(plan.shard_id, video.video_id, result.video["status"] == "error")

    random_weights_told_elsewhere()  # the build's summary says it once
    return process_shard(
        plan,
        config_from_tree(config),
        output,
        retry_failed=retry_failed,
        on_video=tell if inbox is not None else None,
    )


def build_stopped(inbox: Any) -> bool:
    """Whether the driver has stopped the build, asked of its `VideoInbox` without giving up the CPU.

    A `ray.get` on a task's main thread releases the task's CPU while it waits, and Ray hands that CPU
    to a queued shard on another worker: three shards ran at once on 2 CPUs, the third on a fresh
    worker loading every model again (the 21-clip build: 49.6 s, 41.8 s without). Asked from a helper
    thread, the wait holds the CPU.
    """
    import ray

    with ThreadPoolExecutor(max_workers=1) as pool:
        return bool(pool.submit(ray.get, inbox.stopped.remote()).result())


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
    manifest stay unless `prune`. `faceshard build` does the planning before starting any server
    and hands it in (`running_prepared`); a deployment's run plans here.
    """
    prepared = handed_in()  # the flow's function is pickled by value: no module state of its own here
    if prepared is not None:
        return _run(prepared, config, retry_failed)
    cfg = config_from_tree(config)
    with prepare_build(
        manifest,
        out,
        cfg,
        rebuild=rebuild,
        retry_failed=retry_failed,
        roots=roots,
        storage_options=storage_options,
        wait_s=wait_s,
        prune=prune,
    ) as prepared:
        return _run(prepared, config, retry_failed)


def _run(prepared: PreparedBuild, config: dict[str, Any], retry_failed: bool) -> dict[str, Any]:
    get_run_logger().info("%d shards planned, %d to process", prepared.plan.shards_total, len(prepared.todo))
    with interrupt.rearmed():  # the flow engine swapped in its own SIGTERM handler
        shard_stats, failed = run_shards(
            prepared.todo, config, prepared.output, retry_failed, prepared.cfg.runtime
        )
    output = prepared.output
    publish_summary(output.uri, output.storage_options, time.perf_counter() - prepared.started)
    return build_summary(prepared, shard_stats, failed)


def run_shards(
    plans: list[ShardPlan],
    config: dict[str, Any],
    output: Output,
    retry_failed: bool,
    runtime: RuntimeConfig,
) -> tuple[list[dict], list[dict]]:
    """Process `plans` on the cluster with at most `in_flight_limit(runtime)` submitted at once.

    Returns the stats of the committed shards and the failed ones (`{"shard", "error"}`, also
    recorded in the output), both in the order the shards finished. As each video finishes the
    progress goes to this process's listener (the CLI's bar); after every shard also to the
    Prefect progress artifact; at the end a table artifact holds one row per shard. When the user
    stops the build (`flows.interrupt`) nothing more is submitted, and on a second stop the
    running shards are no longer waited for.
    """
    logger = get_run_logger()
    limit = in_flight_limit(runtime)
    progress = BuildProgress(shards_total=len(plans), videos_total=sum(len(p.videos) for p in plans))
    listener = current_listener()
    listeners = [item for item in (listener, ProgressArtifact(progress)) if item]
    shard_task = process_shard_task.with_options(retries=runtime.task_retries)
    stops = interrupt.current()
    logger.info("%d shards to process, at most %d in flight", len(plans), limit)

    def report() -> None:
        for item in listeners:
            item(progress)

    def report_videos() -> None:
        if listener is not None:
            listener(progress)

    report()
    shard_stats: list[dict] = []
    failed: list[dict] = []
    rows: list[dict] = []
    stopping = stops.stopping.is_set if stops else None
    with watch_videos(progress, report_videos, stopping) as inbox:

        def submit(plan: ShardPlan) -> Any:
            # max_calls=0: Ray would otherwise end a GPU task's worker after every task, and with it
            # the models it loaded once (a reload per shard).
            with remote_options(
                num_cpus=runtime.cpus_per_shard, num_gpus=runtime.gpus_per_shard, max_calls=0
            ):
                return shard_task.submit(plan, config, output, retry_failed, inbox)

        finished = bounded_as_completed(
            plans,
            submit,
            limit,
            stop=stopping,
            abandon=stops.abandoning.is_set if stops else None,
        )
        for plan, future in finished:
            future.wait()
            stats, error = None, None
            if future.state.is_completed():
                stats = future.result()
                if stats.get("stopped"):  # never started: the build was stopped first
                    continue
                shard_stats.append(stats)
            elif stopping is not None and stopping():
                continue  # killed with the build (a SIGTERM to its process group reaches Ray too): pending
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
