"""Ctrl-C for a build: the first SIGINT or SIGTERM stops it cleanly, a second one abandons it now.

Before any shard is submitted (validation, lease, plan, start-up) the first signal stops the build
at once. Once shards run, a first SIGINT stops the submitting: the running shards finish and commit,
then the build ends. A second signal, or a SIGTERM, abandons the running shards (their workers are stopped with the
cluster; a shard that did not commit left nothing a later build keeps). Either way the servers this
build started are stopped in order and the build raises `BuildInterrupted`, which the CLI turns
into one line and exit code 130. A step that must not be torn in two (a child process being
started, the lease being taken) runs `deferred`: a signal inside it is acted on when it ends.

The server and Ray's processes do not see the terminal's Ctrl-C (they start with SIGINT blocked),
so only this driver decides what stops when.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class BuildInterrupted(Exception):
    """The user stopped the build. `committed` shards of its output are committed (`total` planned);
    None when it was stopped before planning."""

    def __init__(self, committed: int | None = None, total: int | None = None) -> None:
        super().__init__("interrupted")
        self.committed = committed
        self.total = total


class Interrupts:
    """This process's SIGINT/SIGTERM handling for one build (main thread only; elsewhere a no-op).

    `stopping` is set by the first signal, `abandoning` by the second. `graceful` is turned on when
    shards start: from then the first signal no longer raises, it only stops the submitting.
    `on_signal(count)` is called from the handler (the CLI prints what happens next).
    """

    def __init__(self, on_signal: Callable[[int], None] | None = None) -> None:
        self.on_signal = on_signal
        self.count = 0
        self.graceful = False
        self.stopping = threading.Event()
        self.abandoning = threading.Event()
        self._deferred = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @contextmanager
    def rearmed(self) -> Iterator[None]:
        """Within the block, these handlers again (Prefect's flow engine swaps in its own SIGTERM's)."""
        if not self._previous:
            yield
            return
        swapped = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in swapped.items():
                signal.signal(sig, handler)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Run the block whole: a signal inside it takes effect when it ends."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
        self.check()

    def check(self) -> None:
        """Raise BuildInterrupted if a signal asks this build to end now."""
        if self.abandoning.is_set() or (self.stopping.is_set() and not self.graceful):
            raise BuildInterrupted()

    def _handle(self, signum: int, frame: object) -> None:
        # SIGTERM abandons at once: sent to the process group it also stops Ray's own processes, and
        # a supervisor that sends it wants the process gone, not the running shards finished.
        self.count = max(self.count + 1, 2 if signum == signal.SIGTERM else 1)
        self.stopping.set()
        if self.count > 1:
            self.abandoning.set()
        if self.on_signal is not None:
            self.on_signal(self.count)
        if not self._deferred and not self.graceful:
            self.check()  # once shards run, the fan-out sees the events and the flow ends normally


_current: ContextVar[Interrupts | None] = ContextVar("faceshard_interrupts", default=None)


@contextmanager
def handling(interrupts: Interrupts) -> Iterator[Interrupts]:
    """Install `interrupts` and make it the one this process's build flow consults."""
    token = _current.set(interrupts)
    try:
        with interrupts:
            yield interrupts
    finally:
        _current.reset(token)


def current() -> Interrupts | None:
    return _current.get()


def rearmed() -> Any:
    """`current().rearmed()`, or nothing when no build in this process handles interrupts."""
    interrupts = current()
    return interrupts.rearmed() if interrupts is not None else nullcontext()
