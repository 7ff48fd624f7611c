"""The output's log: the single source of truth for what is committed, and its commit point.

Every change to an output is one entry `_faceshard/log/<seq>.json` written with create-if-absent
(local `link()`, S3 `If-None-Match: *`): an entry is never rewritten, and entry `seq` is only
created once `seq - 1` exists, so the log is a gap-free sequence that every reader sees in one
order. Entries carry their writer's lease epoch; a lease takeover appends `begin` for the new
epoch. Replay's one rule picks the winners:

    an entry whose epoch is lower than the highest epoch of a winning entry before it loses.

So a writer that lost its lease (paused past the TTL, a VM migration) can still append, but every
entry it appends after the takeover's `begin` loses, whatever it writes and however late: it
changes nothing visible. The writer learns it lost from its own entry (replay up to it is final,
the prefix never changes) and stops: `Superseded`. Readers, status and the collector all read state
through the same replay, so they agree on which commit is the shard's.

State = the fold of the winning entries: the metadata (a `metadata` entry switching fingerprint
drops every shard of the old one, atomically: that is --rebuild), the plan, each shard's current
marker (`commit`; `retire` removes it: --prune), whether it is published, failures. `released`
collects every file a winning record named and no longer does (replaced, retired, rebuilt away):
once released a file is never named again (a commit names only its own new attempt's files), which
is what makes the collector's one delete safe even when run by a paused, superseded process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fsspec import AbstractFileSystem

from faceshard.errors import DamagedOutput, StorageError
from faceshard.faults import maybe_fault
from faceshard.storage import fsio
from faceshard.storage.records import (
    ENTRY,
    STATE_DIR,
    Begin,
    Commit,
    FailureEntry,
    MetadataEntry,
    PlanEntry,
    Published,
    Retire,
    Void,
    validate,
)

LOG_DIR = f"{STATE_DIR}/log"
_ENTRY_FILE = re.compile(r"/(\d{10})\.json$")


# An append that loses the race this many times in a row without the log growing gives up: the
# store answers "exists" to the create and "absent" to the read (s3fs's stale listing cache did).
APPEND_STUCK_LIMIT = 20


class Superseded(StorageError):
    """This writer's lease was taken over: nothing it writes from now on counts."""


def entry_path(seq: int) -> str:
    return f"{LOG_DIR}/{seq:010d}.json"


def repair_hint(root: str) -> str:
    return (
        f"Run `faceshard repair {root}` (it says what it fixes and what is left; it never deletes a"
        " committed file), or restore the file from a backup."
    )


@dataclass
class Problem:
    """A log entry that cannot be read: where, what, and which shard it concerned if that is known."""

    seq: int
    path: str
    message: str
    shard: int | None


@dataclass
class LogState:
    """The fold of the winning entries up to `head`."""

    head: int = 0
    epoch: int = 0  # highest epoch of a winning entry
    metadata: dict[str, Any] | None = None
    metadata_seq: int = 0
    plan: dict[str, Any] | None = None
    markers: dict[int, dict[str, Any]] = field(default_factory=dict)
    failures: dict[int, dict[str, Any]] = field(default_factory=dict)
    released: set[str] = field(default_factory=set)
    lost: list[tuple[int, int, str]] = field(default_factory=list)  # (seq, epoch, kind)
    problems: list[Problem] = field(default_factory=list)
    beginners: dict[int, dict[str, Any]] = field(default_factory=dict)  # epoch → its begin entry
    head_digest: str = ""  # of the entry at `head`: a log replaced under us (rmtree, restore) is noticed
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """A copy for another process (a DataLoader worker, a Ray task): everything but the lock."""
        with self.lock:
            return {name: value for name, value in self.__dict__.items() if name != "lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.RLock()

    def reset(self) -> None:
        lock = self.lock
        self.__init__()  # type: ignore[misc]
        self.lock = lock

    def apply(self, entry: Any) -> bool:
        """Fold one validated entry; False when it lost (an older epoch than one already seen)."""
        self.head = entry.seq
        if isinstance(entry, Void):
            return True
        if entry.epoch < self.epoch:
            self.lost.append((entry.seq, entry.epoch, entry.kind))
            if isinstance(entry, Commit):  # a lost commit's files are nobody's
                self.released.update(marker_paths(entry.marker.model_dump()))
            return False
        self.epoch = entry.epoch
        if isinstance(entry, Begin):
            self.beginners[entry.epoch] = entry.model_dump()
        elif isinstance(entry, MetadataEntry):
            self._switch_metadata(entry.metadata.model_dump(), entry.seq)
        elif isinstance(entry, PlanEntry):
            plan = None if entry.plan is None else entry.plan.model_dump()
            old = (self.plan or {}).get("videos_file")
            if old and old != (plan or {}).get("videos_file"):
                self.released.add(old)
            self.plan = plan
        elif isinstance(entry, Commit):
            marker = entry.marker.model_dump()
            fingerprint = (self.metadata or {}).get("fingerprint")
            if fingerprint is not None and marker["dataset_fingerprint"] != fingerprint:
                self.released.update(marker_paths(marker))  # rows of another dataset: never current
                return True
            self._release(self.markers.get(marker["shard"]))
            self.markers[marker["shard"]] = marker
            self.failures.pop(marker["shard"], None)
        elif isinstance(entry, Published):
            marker = self.markers.get(entry.shard)
            if marker is not None and marker["attempt"] == entry.attempt and not marker["published"]:
                if marker.get("staging"):
                    self.released.add(marker["staging"])
                self.markers[entry.shard] = {**marker, "published": True}
        elif isinstance(entry, Retire):
            self._release(self.markers.pop(entry.shard, None))
            self.failures.pop(entry.shard, None)
        elif isinstance(entry, FailureEntry):
            failure = entry.failure.model_dump()
            if failure["dataset_fingerprint"] == (self.metadata or {}).get(
                "fingerprint", failure["dataset_fingerprint"]
            ):
                self.failures[failure["shard"]] = failure
        return True

    def _switch_metadata(self, metadata: dict[str, Any], seq: int) -> None:
        fingerprint = metadata["fingerprint"]
        if (self.metadata or {}).get("fingerprint") != fingerprint:
            for marker in self.markers.values():
                if marker["dataset_fingerprint"] != fingerprint:
                    self._release(marker)
            self.markers = {s: m for s, m in self.markers.items() if m["dataset_fingerprint"] == fingerprint}
            self.failures = {
                s: f for s, f in self.failures.items() if f["dataset_fingerprint"] == fingerprint
            }
            if self.plan is not None and self.plan["dataset_fingerprint"] != fingerprint:
                if self.plan.get("videos_file"):
                    self.released.add(self.plan["videos_file"])
                self.plan = None
        self.metadata, self.metadata_seq = metadata, seq

    def _release(self, marker: dict[str, Any] | None) -> None:
        if marker is None:
            return
        self.released.update(marker_paths(marker))
        if marker.get("staging"):
            self.released.add(marker["staging"])

    def referenced(self) -> set[str]:
        """Relative paths that winning records name now: never deleted."""
        out = {p for marker in self.markers.values() for p in marker_paths(marker)}
        out |= {m["staging"] for m in self.markers.values() if not m["published"] and m.get("staging")}
        if self.plan is not None and self.plan.get("videos_file"):
            out.add(self.plan["videos_file"])
        return out


def marker_paths(marker: dict[str, Any], tables: tuple[str, ...] | None = None) -> list[str]:
    """The data files a marker names: of `tables`, or of every table it holds (side tables too)."""
    files = marker.get("files", {})
    return [entry["path"] for name in (tables or tuple(files)) for entry in files.get(name, [])]


def _parse(data: bytes, path: str, seq: int, root: str) -> Any:
    entry = validate(ENTRY, data, path, "log entry", repair_hint(root))
    if entry.seq != seq:
        raise DamagedOutput(
            f"{path}: the log entry says seq {entry.seq}. Nothing was changed. {repair_hint(root)}"
        )
    return entry


def _shard_hint(data: bytes) -> int | None:
    """The shard an unreadable entry concerned, if its text still says."""
    match = re.search(rb'"shard":\s*(\d+)', data)
    return int(match.group(1)) if match else None


def refresh(fs: AbstractFileSystem, root: str, state: LogState, *, tolerant: bool = False) -> LogState:
    """Read the entries after `state.head` and fold them in (in place; returns `state`).

    The first read lists the log to fetch entries in bulk; after that entries are probed one by
    one from the head (a GET is consistent where a listing may lag). `tolerant` (status, repair)
    records unreadable entries as problems and goes on; otherwise the first one is a StorageError.
    """
    with state.lock:
        return _refresh(fs, root, state, tolerant)


def _refresh(fs: AbstractFileSystem, root: str, state: LogState, tolerant: bool) -> LogState:
    if state.head and state.head_digest:
        data = fsio.read_optional(fs, fsio.join(root, entry_path(state.head)))
        if data is None or _digest(data) != state.head_digest:
            state.reset()  # not the log this state was read from: read it again
    batch: dict[str, bytes] = {}
    listed: list[int] = []
    if state.head == 0:
        paths = fsio.list_files(fs, fsio.join(root, LOG_DIR))
        listed = sorted(int(m.group(1)) for p in paths if (m := _ENTRY_FILE.search(p)))
        batch = fsio.read_many(fs, [fsio.join(root, entry_path(seq)) for seq in listed])
    seq = state.head + 1
    while True:
        path = fsio.join(root, entry_path(seq))
        data = batch.pop(path, None)
        if data is None:
            data = fsio.read_optional(fs, path)
        if data is None:
            if any(s > seq for s in listed):
                message = f"{path}: log entry {seq} is missing while later ones exist. {repair_hint(root)}"
                if not tolerant:
                    raise StorageError(message)
                state.problems.append(Problem(seq, path, message, None))
                state.head = seq
                seq += 1
                continue
            return state
        try:
            entry = _parse(data, path, seq, root)
        except StorageError as exc:
            if not tolerant:
                raise
            state.problems.append(Problem(seq, path, str(exc), _shard_hint(data)))
            state.head = seq
        else:
            state.apply(entry)
        state.head_digest = _digest(data)
        seq += 1


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_SHARED: dict[tuple[str, str], LogState] = {}
_SHARED_LOCK = threading.Lock()


def shared(fs: AbstractFileSystem, root: str) -> LogState:
    """One replayed state per output and process (a Ray worker commits many shards: it reads the
    log once, then only new entries). Every use refreshes it first; see `refresh`."""
    key = (str(fs.protocol), root)
    with _SHARED_LOCK:
        return _SHARED.setdefault(key, LogState())


def replay(fs: AbstractFileSystem, root: str, *, tolerant: bool = False) -> LogState:
    return refresh(fs, root, LogState(), tolerant=tolerant)


def exists(fs: AbstractFileSystem, root: str) -> bool:
    return fsio.read_optional(fs, fsio.join(root, entry_path(1))) is not None


def append(
    fs: AbstractFileSystem, root: str, state: LogState, epoch: int, kind: str, payload: dict[str, Any]
) -> int:
    """Append one entry after the newest (create-if-absent; on a lost race, read on and try the next
    seq) and fold it in. Raises Superseded when the entry lost: a newer epoch began before it."""
    maybe_fault("step", "record")
    with state.lock:
        return _append(fs, root, state, epoch, kind, payload)


def _append(
    fs: AbstractFileSystem, root: str, state: LogState, epoch: int, kind: str, payload: dict[str, Any]
) -> int:
    refresh(fs, root, state)
    stuck = 0  # lost races in a row that showed no new entry
    while True:
        seq = state.head + 1
        entry = {"seq": seq, "epoch": epoch, "kind": kind, "at": _now(), **payload}
        data = json.dumps(entry, indent=1, sort_keys=True, default=str).encode()
        path = fsio.join(root, entry_path(seq))
        parsed = _parse(data, path, seq, root)  # never write what we could not read back
        if fsio.create_if_absent(fs, path, data):
            if state.head != seq - 1:  # someone else's entries arrived meanwhile: fold them first
                refresh(fs, root, state)
            won = state.apply(parsed)
            state.head_digest = _digest(data)
            if not won:
                raise superseded(root, epoch, state)
            return seq
        refresh(fs, root, state)
        stuck = stuck + 1 if state.head < seq else 0
        if stuck >= APPEND_STUCK_LIMIT:
            raise StorageError(
                f"{path}: the store refuses to create log entry {seq} as existing, yet returns no entry"
                f" there ({stuck} tries); a cache or a proxy between this process and the store is"
                " answering. Nothing was committed by this step; run the build again."
            )
        time.sleep(min(1.0, 0.05 * stuck))


def superseded(root: str, epoch: int, state: LogState) -> Superseded:
    newer = state.beginners.get(state.epoch, {})
    who = f"{newer.get('owner', '?')} on {newer.get('host', '?')} pid {newer.get('pid', '?')}"
    return Superseded(
        f"{root}: superseded: this build's lease (epoch {epoch}) was taken over by epoch {state.epoch}"
        f" ({who}); nothing it wrote after that counts. Its committed shards are kept; run the build"
        " again (after the other one) to finish."
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
