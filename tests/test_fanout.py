"""Bounded fan-out and build progress, without Prefect or Ray: a scripted cluster completes futures
in an order the test chooses, and counts what is submitted but unfinished at every moment."""

from __future__ import annotations

import io
import threading
from concurrent.futures import Future

import pytest
from rich.console import Console

from faceshard.app.progress_bar import BuildProgressBar
from faceshard.config import RuntimeConfig
from faceshard.flows import fanout
from faceshard.flows.fanout import bounded_as_completed, in_flight_limit
from faceshard.flows.progress import BuildProgress, shard_row
from faceshard.storage.manifest import ShardPlan
from faceshard.storage.testing import fake_videos


class ScriptedCluster:
    """Runs one shard at a time to completion, newest first, and only once the driver has filled
    every slot it may: a driver that waited for shards in plan order would get shard 0 last."""

    def __init__(self, limit: int, total: int) -> None:
        self.limit, self.total = limit, total
        self.pending: dict[int, Future] = {}
        self.max_pending = 0
        self.submitted: list[int] = []
        self._changed = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def submit(self, item: int) -> Future:
        future: Future = Future()
        with self._changed:
            self.pending[item] = future
            self.submitted.append(item)
            self.max_pending = max(self.max_pending, len(self.pending))
            self._changed.notify_all()
        return future

    def _run(self) -> None:
        for finished in range(self.total):
            with self._changed:
                full = min(self.limit, self.total - finished)
                assert self._changed.wait_for(lambda n=full: len(self.pending) >= n, timeout=30)
                item = max(self.pending)
                future = self.pending.pop(item)
            future.set_result(item * 10)


def test_at_most_limit_shards_are_unfinished_and_outcomes_come_in_completion_order() -> None:
    cluster = ScriptedCluster(limit=3, total=8)
    cluster.thread.start()
    outcomes = [(item, future.result()) for item, future in bounded_as_completed(range(8), cluster.submit, 3)]
    cluster.thread.join(timeout=5)

    assert cluster.max_pending == 3  # every slot used, never more
    assert cluster.submitted == list(range(8))  # submitted in plan order, each once
    assert [item for item, _ in outcomes] == [2, 3, 4, 5, 6, 7, 1, 0]
    assert all(result == item * 10 for item, result in outcomes)


def test_fewer_items_than_the_limit_and_no_items() -> None:
    cluster = ScriptedCluster(limit=5, total=2)
    cluster.thread.start()
    assert [item for item, _ in bounded_as_completed([0, 1], cluster.submit, 5)] == [1, 0]
    assert list(bounded_as_completed([], cluster.submit, 5)) == []
    with pytest.raises(ValueError, match="limit"):
        list(bounded_as_completed([0], cluster.submit, 0))


def test_default_limit_is_twice_the_slots_of_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 2.0})
    assert in_flight_limit(RuntimeConfig(cpus_per_shard=2)) == 8  # 4 slots
    assert in_flight_limit(RuntimeConfig(cpus_per_shard=1, gpus_per_shard=0.5)) == 8  # 4 GPU slots
    assert in_flight_limit(RuntimeConfig(cpus_per_shard=1, gpus_per_shard=1)) == 4  # GPUs bind
    assert in_flight_limit(RuntimeConfig(cpus_per_shard=16)) == 2  # one slot at least
    assert in_flight_limit(RuntimeConfig(max_in_flight=5)) == 5
    assert fanout.cluster_slots(RuntimeConfig(cpus_per_shard=0.5)) == 16


def _plans(sizes: list[int]) -> list[ShardPlan]:
    videos = fake_videos(sum(sizes))
    plans, start = [], 0
    for shard, size in enumerate(sizes):
        plans.append(ShardPlan(shard, videos[start : start + size]))
        start += size
    return plans


def test_progress_counts_videos_of_finished_shards_and_failures() -> None:
    plans = _plans([3, 3, 2])
    progress = BuildProgress(shards_total=3, videos_total=8, started=0.0)
    assert (progress.percent, progress.eta_seconds) == (0.0, None)
    progress.shard_finished(plans[2], failed=False)
    progress.shard_finished(plans[0], failed=True)
    assert (progress.shards_done, progress.videos_done, progress.shards_failed) == (2, 5, 1)
    assert progress.percent == pytest.approx(62.5)
    assert progress.eta_seconds is not None and progress.eta_seconds > 0
    assert BuildProgress(shards_total=0, videos_total=0).percent == 100.0  # nothing left to do


def test_the_bar_is_redrawn_with_each_shard() -> None:
    plans = _plans([2, 2, 1])
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, color_system=None)
    progress = BuildProgress(shards_total=3, videos_total=5)
    frames = []
    with BuildProgressBar(console) as bar:
        bar(progress)
        frames.append(screen.getvalue())
        for plan, failed in zip(plans, (False, True, False), strict=True):
            progress.shard_finished(plan, failed=failed)
            bar(progress)
            frames.append(screen.getvalue())
    assert "shards 0/3" in frames[0] and "videos 0/5" in frames[0] and "failures 0" in frames[0]
    assert "shards 1/3" in frames[1] and "videos 2/5" in frames[1]
    assert "shards 2/3" in frames[2] and "failures 2 (1 shard)" in frames[2]  # its 2 videos failed
    assert "shards 3/3" in frames[3] and "videos 5/5" in frames[3] and "ETA 0:00:00" in frames[3]
    assert "videos/s" in frames[3]


def test_shard_rows_say_what_a_shard_produced_or_why_it_failed() -> None:
    plan = _plans([2])[0]
    stats = {"videos": 2, "faces": 7, "identities": 3, "status_counts": {"ok": 1, "error": 1}}
    committed = shard_row(plan, {**stats, "seconds": 1.5, "bytes": 900}, None)
    assert committed == {
        "shard": 0,
        "status": "committed",
        "videos": 2,
        "faces": 7,
        "identities": 3,
        "errors": 1,
        "seconds": 1.5,
        "bytes": 900,
        "error": None,
    }
    failed = shard_row(plan, None, "InjectedFault: boom")
    assert (failed["status"], failed["videos"], failed["error"]) == ("failed", 0, "InjectedFault: boom")
