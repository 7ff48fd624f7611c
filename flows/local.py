"""`faceshard build` on the embedded default: a local Prefect server and a local Ray cluster.

The checks that must fail fast (the manifest, the weights' files) run before Ray starts, and Prefect
itself is imported only once Ray is up: its import takes about a second of the driver, which the
workers' start and warm-up then overlap instead of waiting for.
"""

from __future__ import annotations

from typing import Any

from faceshard.config import BuildConfig, RuntimeConfig, config_from_tree
from faceshard.flows.fanout import cluster_slots
from faceshard.flows.plan import dataset_weights
from faceshard.flows.progress import ProgressListener, reporting_to
from faceshard.flows.runtime import apply_local_defaults, local_runtime, ray_init_kwargs
from faceshard.storage.manifest import load_manifest


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
) -> dict[str, Any]:
    """Run the `faceshard-build` flow on one local Prefect server and a local Ray cluster.

    A bad manifest fails before anything starts. Missing weights or a bad identity metric fail
    before Ray starts (the weights are fingerprinted from their files; no model is loaded here) and
    stop the server launched beside that check. Nothing is written to `out` before both pass.
    `on_progress` is called with a `BuildProgress` as the build starts and after every shard.
    """
    apply_local_defaults()
    load_manifest(manifest, roots=roots)
    config = cfg.model_dump(mode="json")
    with local_runtime(
        cfg.runtime,
        before_ray=lambda: dataset_weights(cfg),
        on_ray_ready=lambda: warm_workers(config, cfg.runtime),
    ):
        from prefect_ray import RayTaskRunner

        from faceshard.flows.build import build_dataset

        runner = RayTaskRunner(address=cfg.runtime.ray_address, init_kwargs=ray_init_kwargs(cfg.runtime))
        with reporting_to(on_progress):
            return build_dataset.with_options(task_runner=runner)(
                manifest=manifest,
                out=out,
                config=config,
                rebuild=rebuild,
                retry_failed=retry_failed,
                roots=roots,
                storage_options=storage_options,
                wait_s=wait_s,
                prune=prune,
            )


def warm_workers(config: dict[str, Any], runtime: RuntimeConfig) -> None:
    """Load the build's models in every worker slot of a just-started cluster, without waiting.

    Run while the Prefect server is still starting: each worker imports the pipeline and loads its
    models once (`get_processor` keeps them for the process), so the first shards start warm. A
    failure here is left to the shard that meets it again, where it is reported as a shard error.
    """
    import ray

    warm = ray.remote(num_cpus=runtime.cpus_per_shard, num_gpus=runtime.gpus_per_shard, max_calls=0)(
        _warm_worker
    )
    for _ in range(cluster_slots(runtime)):
        warm.remote(config)


def _warm_worker(config: dict[str, Any]) -> str | None:
    """Load the models here; an error is returned (not raised) because the shards report it."""
    try:
        from faceshard.tasks.shard import get_processor

        get_processor(config_from_tree(config))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
