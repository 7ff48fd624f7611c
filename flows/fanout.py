"""Bounded fan-out: at most `limit` shards submitted at once, outcomes taken as they finish.

prefect-ray turns every `task.submit` into a Ray task with no cap on pending ones (prefect-ray #76:
15,000 mapped tasks hung), so submitting 865 shards up front means 865 pending task runs held by
Ray, the driver and the Prefect server. Here the next shard is submitted only when one finishes,
and each outcome is handed back the moment its shard finishes, whatever its place in the plan.
"""

from __future__ import annotations

import itertools
import queue
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from faceshard.config import RuntimeConfig


class DoneCallbackFuture(Protocol):
    """What the fan-out needs of a future: Prefect's, Ray's wrapper and `concurrent.futures` all fit."""

    def add_done_callback(self, fn: Callable[[Any], Any]) -> Any: ...


Item = TypeVar("Item")
Future = TypeVar("Future", bound=DoneCallbackFuture)

POLL_S = 0.2  # how soon a stop or abandon request is seen while waiting on running shards


def bounded_as_completed(
    items: Iterable[Item],
    submit: Callable[[Item], Future],
    limit: int,
    *,
    stop: Callable[[], bool] | None = None,
    abandon: Callable[[], bool] | None = None,
) -> Iterator[tuple[Item, Future]]:
    """Submit `items` keeping at most `limit` unfinished; yield `(item, future)` in completion order.

    The next item is submitted before a finished one is yielded, so the cluster stays busy while
    the caller records an outcome. Futures signal completion through `add_done_callback`, which may
    run on another thread (Ray's); the queue hands them to this one. Once `stop()` is true nothing
    more is submitted (the unfinished are still waited for); once `abandon()` is true the
    unfinished are no longer waited for either. Both are looked at least every `POLL_S`.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    finished: queue.SimpleQueue[tuple[Item, Future]] = queue.SimpleQueue()
    waiting = iter(items)
    stopped = stop or (lambda: False)
    abandoned = abandon or (lambda: False)

    def launch(item: Item) -> None:
        future = submit(item)
        future.add_done_callback(lambda _: finished.put((item, future)))

    in_flight = 0
    for item in itertools.islice(waiting, limit):
        if stopped():
            break
        launch(item)
        in_flight += 1
    while in_flight and not abandoned():
        try:
            item, future = finished.get(timeout=POLL_S)
        except queue.Empty:
            continue
        in_flight -= 1
        if not stopped():
            for following in itertools.islice(waiting, 1):
                launch(following)
                in_flight += 1
        yield item, future


def cluster_slots(runtime: RuntimeConfig) -> int:
    """Shards the connected Ray cluster runs at once: its CPUs (and GPUs) over what one shard asks."""
    import ray

    resources = ray.cluster_resources()
    slots = resources.get("CPU", 0.0) / runtime.cpus_per_shard
    if runtime.gpus_per_shard:
        slots = min(slots, resources.get("GPU", 0.0) / runtime.gpus_per_shard)
    return max(1, int(slots))


def in_flight_limit(runtime: RuntimeConfig) -> int:
    """`runtime.max_in_flight`, or twice the cluster's slots: every slot busy plus one shard queued
    behind each, so a slot never waits on the driver, and no more."""
    return runtime.max_in_flight or 2 * cluster_slots(runtime)
