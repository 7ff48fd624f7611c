"""A randomized interleaving of two writers on one output (issue 19), as a hypothesis rule-based
state machine: builds, a writer paused between two steps of a commit while the other writer runs a
whole command (build, --prune, --rebuild, repair, cleanup) and then resumed, writers killed
between two steps, prune, rebuild, repair and cleanup.

Invariant after every step: every row committed and not removed by the user (--prune, --rebuild)
is readable exactly once, through the reader and through a plain hive listing, status vouches for
everything, and no file outside faceshard's names or outside the output is touched.

Both writers live in this process (a second `Output.open` here takes the lease over at once, as a
real second build does after the TTL), so many interleavings fit in a few tens of seconds; the
same pauses with real processes and a real TTL are in test_storage_fencing.py. More runs:
FACESHARD_STATEFUL_EXAMPLES=200 FACESHARD_STATEFUL_STEPS=30.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.dataset as pds
import storage_writers as writers
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from faceshard.errors import StorageError
from faceshard.faults import InjectedFault
from faceshard.storage import collector as collector_module
from faceshard.storage import commit as commit_module
from faceshard.storage import fsio
from faceshard.storage import log as log_module
from faceshard.storage.commit import Output, read_state
from faceshard.storage.reader import read_table
from faceshard.storage.repair import repair_output
from faceshard.storage.status import dataset_status

IDS = [f"v{i:05d}" for i in range(writers.N_VIDEOS)]
STEPS = ("lease", "record", "plan", "check", "data", "commit", "publish", "delete")
CONFIGS = (writers.CONFIG, {**writers.CONFIG, "embed": {"dtype": "float32"}})
USER_FILES = {
    "notes.txt": b"my notes",
    "videos/clip_000.mp4": b"a user's video",
    "faces/split=train/notes.md": b"about the split",
    "identities/deep/x.bin": b"nested",
    "_faceshard/mine.txt": b"inside the state folder",
    "_faceshard/staging/user.bin": b"inside staging",
}
ids_strategy = st.sets(st.sampled_from(IDS), min_size=1).map(sorted)


class TwoWriters(RuleBasedStateMachine):
    """`readable` is the model: the videos the output must show, each exactly once."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="faceshard-stateful-"))
        self.root = self.tmp / "out"
        self.config = 0
        self.readable: set[str] = set()
        self.removed: set[str] = set()  # what the running step removed on the user's request
        self.pause: tuple[str, Any] | None = None  # (step, what runs there) for the writer inside
        self.patched: list[tuple[Any, Any]] = []

    # -- plumbing

    def _hook(self, site: str, key: str) -> None:
        if site != "step" or self.pause is None or key != self.pause[0]:
            return
        _, action = self.pause
        self.pause = None  # once, and never inside the other writer's command
        action()

    def _patch(self) -> None:
        for module in (commit_module, log_module, collector_module):
            self.patched.append((module, module.maybe_fault))
            module.maybe_fault = self._hook

    def _build(self, ids: list[str], **kwargs: Any) -> None:
        writers.manifest_build(str(self.root), ids, config=CONFIGS[self.config], **kwargs)

    def _command(self, name: str, ids: list[str]) -> None:
        """One whole command by a writer, updating what the user asked to remove."""
        if name == "build":
            self._build(ids)
        elif name == "prune":
            self.removed |= self.readable - set(ids)
            self._build(ids, prune=True)
        elif name == "rebuild":
            self.removed |= self.readable
            self.config = 1 - self.config
            self._build(ids, rebuild=True)
        elif name == "repair":
            repair_output(str(self.root))
        else:
            Output.open(str(self.root), config=CONFIGS[self.config], weights=writers.WEIGHTS).close()

    # -- rules

    @initialize(ids=ids_strategy)
    def first_build(self, ids: list[str]) -> None:
        self._patch()
        self._build(ids)
        for name, data in USER_FILES.items():
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (self.tmp / "victim.txt").write_bytes(b"outside the output")

    @rule(ids=ids_strategy)
    def build(self, ids: list[str]) -> None:
        self._command("build", ids)

    @rule(ids=ids_strategy, stop_after=st.integers(0, 3))
    def build_killed_between_shards(self, ids: list[str], stop_after: int) -> None:
        self._build(ids, stop_after=stop_after)

    @rule(ids=ids_strategy, step=st.sampled_from(STEPS))
    def build_killed_at_a_step(self, ids: list[str], step: str) -> None:
        def die() -> None:
            raise InjectedFault(f"killed at {step}")

        self.pause = (step, die)
        with contextlib.suppress(InjectedFault):
            self._build(ids)
        self.pause = None

    @rule(
        ids=ids_strategy,
        step=st.sampled_from(STEPS),
        other=st.sampled_from(["build", "prune", "rebuild", "repair", "cleanup"]),
        other_ids=ids_strategy,
    )
    def build_paused_while_the_other_writer_runs(
        self, ids: list[str], step: str, other: str, other_ids: list[str]
    ) -> None:
        fired: list[bool] = []

        def other_writer() -> None:
            fired.append(True)
            self._command(other, other_ids)

        config = self.config
        self.pause = (step, other_writer)
        try:
            writers.manifest_build(str(self.root), ids, config=CONFIGS[config])
            assert not fired, f"a build paused at {step!r} while another took over finished without error"
        except log_module.Superseded:
            assert fired
        except StorageError as exc:  # the output was rebuilt under it: refused, nothing written
            assert fired and "fingerprint" in str(exc), exc
        self.pause = None

    @rule(ids=ids_strategy)
    def prune(self, ids: list[str]) -> None:
        self._command("prune", ids)

    @rule(ids=ids_strategy)
    def rebuild(self, ids: list[str]) -> None:
        self._command("rebuild", ids)

    @rule()
    def repair(self) -> None:
        self._command("repair", [])

    @rule()
    def cleanup(self) -> None:
        self._command("cleanup", [])

    # -- the invariant

    @invariant()
    def every_committed_row_is_readable_exactly_once_and_nothing_else_is_touched(self) -> None:
        if not (self.root / "_faceshard.json").exists():
            return
        uri = str(self.root)
        videos = read_table(uri, "videos")["video_id"].to_pylist()
        counts = Counter(videos)
        assert all(n == 1 for n in counts.values()), (
            f"videos twice: {[v for v, n in counts.items() if n > 1]}"
        )
        now = set(videos)
        lost = self.readable - self.removed - now
        assert not lost, f"committed rows lost: {sorted(lost)}"
        for table in ("videos", "faces", "identities"):
            path = self.root / table
            hive = (
                pds.dataset(
                    str(path), format="parquet", partitioning="hive", exclude_invalid_files=True
                ).to_table(columns=["video_id"])
                if path.exists()
                else None
            )
            listed = Counter([] if hive is None else hive["video_id"].to_pylist())
            committed = Counter(read_table(uri, table)["video_id"].to_pylist())
            # A plain listing shows only committed rows; a publish cut short by a kill shows fewer until
            # the next open of the output rolls it forward (the reader, following the log, has them all;
            # test_storage_fencing checks the files on disk equal the commits after that open).
            assert listed <= committed, f"{table}: the listing shows rows no commit holds"
        status = dataset_status(uri)
        assert status["problems"] == [] and status["committed"] == len(read_state(*fsio.open_fs(uri)).markers)
        for name, data in USER_FILES.items():
            assert (self.root / name).read_bytes() == data, f"a user's file changed: {name}"
        assert (self.tmp / "victim.txt").read_bytes() == b"outside the output"
        self.readable, self.removed = now, set()

    def teardown(self) -> None:
        for module, original in self.patched:
            module.maybe_fault = original
        shutil.rmtree(self.tmp, ignore_errors=True)


TwoWriters.TestCase.settings = settings(
    max_examples=int(os.environ.get("FACESHARD_STATEFUL_EXAMPLES", "12")),
    stateful_step_count=int(os.environ.get("FACESHARD_STATEFUL_STEPS", "8")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_two_writers = TwoWriters.TestCase
