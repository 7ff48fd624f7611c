"""`faceshard build` on the embedded default: a local Prefect server and a local Ray cluster.

Everything that can refuse a build or find it has nothing to do runs first, with no server: the
manifest, the weights' files, the output's lease and the plan (`flows.plan.prepare_build`). A build
with nothing to process ends there. Otherwise the Prefect server, Ray and the workers' models start
side by side (the server boots while Ray starts; the models load in the workers as soon as Ray is
up, while the server may still be starting), and the flow runs the plan already made. Each phase
is told to `on_phase` as it ends; Ctrl-C is handled as `flows.interrupt` says.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from faceshard.config import BuildConfig, RuntimeConfig, config_from_tree
from faceshard.flows import interrupt
from faceshard.flows.fanout import cluster_slots
from faceshard.flows.interrupt import BuildInterrupted, Interrupts
from faceshard.flows.plan import PhaseListener, PreparedBuild, build_summary, handing_in, prepare_build
from faceshard.flows.progress import ProgressListener, reporting_to
from faceshard.flows.runtime import apply_local_defaults, local_runtime, ray_init_kwargs, serial_startup


def run_build(
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
    on_progress: ProgressListener | None = None,
    on_phase: PhaseListener | None = None,
    interrupts: Interrupts | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """Run the `faceshard-build` flow on one local Prefect server and a local Ray cluster.

    A bad manifest, missing weights, a busy output or a changed fingerprint fail before any server
    starts, and nothing is written to `out` before they pass. `on_progress` gets a `BuildProgress`
    as the build starts and as each video and shard finishes. The summary's `seconds` is wall time
    since `started` (default: now), `startup_seconds` the part before the first shard was submitted.
    With `interrupts` (installed by the caller), a Ctrl-C raises BuildInterrupted once what it
    started is stopped; without, this function installs its own.
    """
    started = time.perf_counter() if started is None else started
    if interrupts is None:
        with interrupt.handling(Interrupts()) as own:
            return run_build(
                manifest, out, cfg, rebuild=rebuild, retry_failed=retry_failed, roots=roots,
                storage_options=storage_options, wait_s=wait_s, prune=prune, on_progress=on_progress,
                on_phase=on_phase, interrupts=own, started=started,
            )  # fmt: skip
    apply_local_defaults()
    prepared = prepare_build(
        manifest, out, cfg, rebuild=rebuild, retry_failed=retry_failed, roots=roots,
        storage_options=storage_options, wait_s=wait_s, prune=prune, on_phase=on_phase, started=started,
        whole=interrupts.deferred,
    )  # fmt: skip
    flow_parameters = {"manifest": manifest, "out": out, "retry_failed": retry_failed, "prune": prune}
    with prepared:
        if not prepared.todo:  # nothing to process: no server, no cluster
            return build_summary(prepared, [], [])
        try:
            summary = _run_on_local_runtime(prepared, flow_parameters, on_progress, on_phase, interrupts)
        except BuildInterrupted as stopped:
            if stopped.committed is None:  # stopped before any shard was submitted
                stopped.committed = len(set(prepared.plan.committed))
                stopped.total = prepared.plan.shards_total
            raise
    summary["seconds"] = round(time.perf_counter() - started, 2)  # servers stopped, lease released
    return summary


def _run_on_local_runtime(
    prepared: PreparedBuild,
    flow_parameters: dict[str, Any],
    on_progress: ProgressListener | None,
    on_phase: PhaseListener | None,
    interrupts: Interrupts,
) -> dict[str, Any]:
    cfg = prepared.cfg
    config = cfg.model_dump(mode="json")
    tell = on_phase or (lambda phase, seconds, detail: None)
    # Prefect's import (a second or two of this process) runs beside the server's and Ray's start,
    # which mostly wait on other processes; the flow's import below then finds it done.
    threading.Thread(target=_import_flow, name="import-flow", daemon=True).start()
    with local_runtime(
        cfg.runtime,
        on_ray_ready=lambda: warm_workers(config, cfg.runtime, tell),
        on_phase=tell,
        whole=interrupts.deferred,
    ):
        interrupts.check()
        from prefect_ray import RayTaskRunner

        from faceshard.flows.build import build_dataset

        runner = RayTaskRunner(address=cfg.runtime.ray_address, init_kwargs=ray_init_kwargs(cfg.runtime))
        startup = time.perf_counter() - prepared.started
        interrupts.graceful = True  # from here a first Ctrl-C lets the running shards commit
        interrupts.check()
        with reporting_to(on_progress), handing_in(prepared):
            summary = build_dataset.with_options(task_runner=runner)(config=config, **flow_parameters)
    if interrupts.stopping.is_set():
        raise BuildInterrupted(summary["shards_committed"], summary["shards_total"])
    summary["startup_seconds"] = round(startup, 2)
    return summary


def _import_flow() -> None:
    import faceshard.flows.build  # noqa: F401


def warm_workers(config: dict[str, Any], runtime: RuntimeConfig, on_phase: PhaseListener) -> None:
    """Load the build's models in every worker slot of a just-started cluster, without waiting.

    Run while the Prefect server is still starting: each worker imports the pipeline and loads its
    models once (`get_processor` keeps them for the process), so the first shards start warm.
    `on_phase("models", …)` is told when every slot has loaded them. A failure here is left to the
    shard that meets it again, where it is reported as a shard error.
    """
    import ray

    warm = ray.remote(num_cpus=runtime.cpus_per_shard, num_gpus=runtime.gpus_per_shard, max_calls=0)(
        _warm_worker
    )
    started = time.perf_counter()
    refs = [warm.remote(config) for _ in range(cluster_slots(runtime))]

    def wait() -> None:
        try:
            errors = [error for error in ray.get(refs) if error]
        except Exception:  # the cluster went away: the build ended first, nothing to tell
            return
        detail = (
            f"detector ready in {len(refs)} worker(s); depth and embedding models load beside the first videos"
            if not errors
            else f"failed to load: {errors[0]}"
        )
        on_phase("models", time.perf_counter() - started, detail)

    if serial_startup():
        wait()
    else:
        threading.Thread(target=wait, name="models-watch", daemon=True).start()


def _warm_worker(config: dict[str, Any]) -> str | None:
    """Load the models here; an error is returned (not raised) because the shards report it."""
    try:
        from faceshard.models.registry import random_weights_told_elsewhere
        from faceshard.tasks.shard import get_processor

        random_weights_told_elsewhere()  # the build's summary says it once
        get_processor(config_from_tree(config))  # the detector now; the other models go on loading
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
