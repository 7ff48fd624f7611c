"""Writer processes for the storage safety tests: a whole "build" driven through the storage layer
with fake tables (no Prefect, no Ray), importable by spawned child processes."""

from __future__ import annotations

import random
import time
import traceback
from typing import Any

from faceshard.errors import OutputBusy
from faceshard.storage.commit import Output
from faceshard.storage.manifest import ShardPlan, plan_shards
from faceshard.storage.testing import fake_shard_tables, fake_videos

CONFIG = {"detect": {"thresholds": [0.85, 0.95, 0.95]}, "embed": {"dtype": "float16"}}
WEIGHTS = {"repvit": {"source": "hub:repvit", "fingerprint": "aaa", "random": False}}
N_VIDEOS = 12
SHARD_SIZE = 3


def plans() -> list[ShardPlan]:
    """Shards spanning two splits, so a shard has two files per table."""
    return plan_shards(fake_videos(N_VIDEOS, splits=("train", "val")), SHARD_SIZE)


def tables(plan: ShardPlan) -> dict[str, Any]:
    """Deterministic rows per shard: any two builds commit equal rows."""
    return fake_shard_tables(plan, errors={"v00005": "decode failed"})


def build(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    wait_s: float = 0.0,
    ttl_s: float = 60.0,
    commit_delay_s: float = 0.0,
    rng: random.Random | None = None,
    retry_failed: bool = False,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Open, plan, commit every pending shard, close: what `faceshard build` does to its output.

    `retry_failed` then recommits the shard of the failed video v00005 with the same error row (a
    replacement that rewrites the shard's files but not its rows).
    """
    out = Output.open(
        uri,
        config=config or CONFIG,
        weights=WEIGHTS,
        storage_options=storage_options,
        wait_s=wait_s,
        lease_ttl_s=ttl_s,
    )
    with out:
        todo = plans()
        out.set_plan(todo)
        pending = out.pending(todo)
        for plan in pending:
            if commit_delay_s:
                time.sleep(commit_delay_s if rng is None else rng.uniform(0, commit_delay_s))
            out.commit_shard(plan, tables(plan), {})
        if retry_failed:
            plan = next(p for p in todo if any(v.video_id == "v00005" for v in p.videos))
            video = ShardPlan(plan.shard_id, [v for v in plan.videos if v.video_id == "v00005"])
            out.replace_videos(plan, fake_shard_tables(video, errors={"v00005": "decode failed"}), {})
        return {"committed": [p.shard_id for p in pending], "epoch": out.lease.epoch}


def manifest_build(
    uri: str,
    video_ids: list[str],
    *,
    prune: bool = False,
    rebuild: bool = False,
    config: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    ttl_s: float = 60.0,
    wait_s: float = 0.0,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """What `faceshard build` does with a manifest of these videos (of `fake_videos(N_VIDEOS)`):
    plan against the output's prior plan (growing, `prune`, `rebuild`), then commit the pending
    shards (only `stop_after` of them: a build interrupted between shards)."""
    import polars as pl

    from faceshard.storage.plan import plan_build

    tasks = {v.video_id: v for v in fake_videos(N_VIDEOS, splits=("train", "val"))}
    out = Output.open(
        uri,
        config=config or CONFIG,
        weights=WEIGHTS,
        rebuild=rebuild,
        storage_options=storage_options,
        lease_ttl_s=ttl_s,
        wait_s=wait_s,
    )
    with out:
        plan = plan_build(
            pl.Series(sorted(video_ids), dtype=pl.String), out.prior_plan(), SHARD_SIZE, prune=prune
        )
        out.apply_plan(plan)
        members = plan.shards.group_by("shard", maintain_order=True).agg("video_id")
        todo = [
            ShardPlan(shard, [tasks[v] for v in ids])
            for shard, ids in members.iter_rows()
            if shard in plan.todo
        ]
        for shard_plan in todo[:stop_after]:
            out.commit_shard(shard_plan, tables(shard_plan), {})
        return {"committed": [p.shard_id for p in todo[:stop_after]], "epoch": out.lease.epoch}


def build_in_child(
    start: Any, results: Any, name: str, uri: str, storage_options: dict[str, Any] | None, wait_s: float
) -> None:
    """One of two builds started together (`start` is a barrier): reports done / busy / error."""
    start.wait()
    try:
        done = build(uri, storage_options, wait_s=wait_s, commit_delay_s=0.05)
        results.put((name, "done", done))
    except OutputBusy as exc:
        results.put((name, "busy", str(exc)))
    except Exception:
        results.put((name, "error", traceback.format_exc()))


def hammer(uri: str, seed: int, stop_at: float, errors: str) -> None:
    """Soak writer: build again and again (waiting briefly for the lease, random pauses) until
    `stop_at`; the parent SIGKILLs these processes at random moments. Anything but OutputBusy is
    appended to the file `errors` (a fenced writer's refusal is expected there, nothing else)."""
    rng = random.Random(seed)
    while time.time() < stop_at:
        try:
            build(
                uri,
                wait_s=rng.uniform(0, 1.0),
                ttl_s=5.0,
                commit_delay_s=0.05,
                rng=rng,
                retry_failed=rng.random() < 0.5,
            )
        except OutputBusy:
            pass
        except Exception:
            with open(errors, "a") as log:
                log.write(f"--- writer {seed}\n{traceback.format_exc()}")
        time.sleep(rng.uniform(0, 0.2))


def main(argv: list[str]) -> None:
    """`python tests/storage_writers.py URI OPTIONS_JSON TTL_S WAIT_S [retry] [delay=S]`: one build in
    a real process (the fencing tests pause it with SIGSTOP or a `step:` fault and see how it ends)."""
    import json
    import sys

    uri, options, ttl_s, wait_s = argv[0], json.loads(argv[1]), float(argv[2]), float(argv[3])
    delay = next((float(a.split("=", 1)[1]) for a in argv[4:] if a.startswith("delay=")), 0.0)
    done = build(
        uri,
        options or None,
        ttl_s=ttl_s,
        wait_s=wait_s,
        retry_failed="retry" in argv[4:],
        commit_delay_s=delay,
    )
    print(json.dumps(done))
    sys.stdout.flush()


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
