"""One writer per output: a lease taken by atomic create-if-absent, heartbeated, taken over only
after its heartbeat was seen to stop.

Lease records live at `_faceshard/lease/epoch-00000007.json`; the highest epoch is the current
lease. Taking the lease (first time, after a release, or over a stale holder) is creating the file
of the next epoch with a create-if-absent write (`fsio.create_if_absent`: local `link()`, S3
`If-None-Match: *`), so of two builds racing for epoch N+1 exactly one wins. Only the holder
rewrites its own epoch file (heartbeat: `beat` counts up every `heartbeat_s`; release).

Takeover trusts no clock but the taker's own: a held lease is taken over only after the taker has
watched the holder's record not change for the holder's TTL by its own monotonic clock (or the
holder is a dead process on the same host, or released). A holder whose clock runs minutes ahead or
behind therefore keeps its lease while it beats. The lease only says who should write; the fence
that makes a superseded writer harmless is the log (storage/log.py): the taker appends `begin` for
its epoch, and every later entry of an older epoch loses.

"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fsspec import AbstractFileSystem

from faceshard.errors import DamagedOutput, OutputBusy, StorageError
from faceshard.storage import fsio
from faceshard.storage.records import LeaseRecord, validate

LEASE_DIR = "_faceshard/lease"
DEFAULT_TTL_S = 60.0
POLL_S = 0.2
_EPOCH_FILE = re.compile(r"epoch-(\d+)\.json$")


def epoch_file(epoch: int) -> str:
    return f"{LEASE_DIR}/epoch-{epoch:08d}.json"


def host_id() -> str:
    """Host name plus boot id: a pid means the same process only on the same host and boot."""
    boot = ""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()[:8]
    except OSError:
        pass
    return f"{socket.gethostname()}/{boot}" if boot else socket.gethostname()


def _process_start(pid: int) -> str | None:
    """Start time of `pid` in clock ticks since boot (tells a reused pid apart), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
        return stat[stat.rindex(")") + 2 :].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def _process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now_start = _process_start(pid)
    return start is None or now_start is None or now_start == start


@dataclass(frozen=True)
class LeaseRef:
    """What a writer carries to prove it may commit: small and picklable (goes to every worker)."""

    epoch: int
    token: str
    ttl_s: float


def describe(record: dict[str, Any], now: float | None = None) -> str:
    """'alice on host-a pid 4242 (epoch 7), heartbeat 3 s ago by its clock, TTL 60 s'."""
    now = time.time() if now is None else now
    beat = now - float(record.get("heartbeat_at", 0))
    return (
        f"{record.get('owner', '?')} on {record.get('host', '?')} pid {record.get('pid', '?')}"
        f" (epoch {record.get('epoch', '?')}, heartbeat {beat:.0f} s ago by its clock, TTL"
        f" {record.get('ttl_s', '?')} s)"
    )


def lease_state(record: dict[str, Any], now: float | None = None) -> str:
    """'released', 'dead' (a dead process on this host), 'quiet' (its clock says no heartbeat for a
    TTL: a hint only, takeover needs the heartbeat seen stopped) or 'held'."""
    now = time.time() if now is None else now
    if record.get("released"):
        return "released"
    if record.get("host") == host_id() and not _process_alive(
        int(record.get("pid", -1)), record.get("pid_start")
    ):
        return "dead"
    if now > float(record.get("heartbeat_at", 0)) + float(record.get("ttl_s", DEFAULT_TTL_S)):
        return "quiet"
    return "held"


def current(fs: AbstractFileSystem, root: str) -> tuple[int, dict[str, Any]] | None:
    """The newest lease (epoch, record), or None when the output never had one.

    The listing is only a hint: the epochs after the newest listed one are probed directly, so a
    listing that lags behind a takeover cannot hide it. An invalid record is a StorageError.
    """
    epoch = _newest_epoch(fs, root)
    if epoch == 0:
        return None
    return epoch, read_record(fs, root, epoch)


def read_record(fs: AbstractFileSystem, root: str, epoch: int) -> dict[str, Any]:
    path = fsio.join(root, epoch_file(epoch))
    hint = (
        f"If no build is running on this output, `faceshard repair {root}` takes the lease over once it"
        " has seen the record unchanged for the TTL."
    )
    record = validate(LeaseRecord, fsio.read_bytes(fs, path), path, "lease record", hint)
    return record.model_dump()


class Lease:
    """The held lease of one build: heartbeats in a daemon thread until `release`."""

    def __init__(self, fs: AbstractFileSystem, root: str, record: dict[str, Any]) -> None:
        self.fs, self.root, self.record = fs, root, record
        self.ref = LeaseRef(int(record["epoch"]), str(record["token"]), float(record["ttl_s"]))
        self.lost: str | None = None
        self.took_over: dict[str, Any] | None = None  # the record of the holder this lease replaced
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(
        cls,
        fs: AbstractFileSystem,
        root: str,
        *,
        owner: str | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        heartbeat_s: float | None = None,
        wait_s: float = 0.0,
        uri: str | None = None,
        unreadable_ok: bool = False,
    ) -> Lease:
        """Take the lease; OutputBusy names a live holder after `wait_s`.

        A holder whose heartbeat looks stopped by its own timestamps (or, with `unreadable_ok`, whose
        record cannot be read: repair) is watched for its TTL whatever `wait_s` says, and taken over
        only if its record did not change meanwhile, by this process's monotonic clock.
        """
        heartbeat_s = ttl_s / 4 if heartbeat_s is None else heartbeat_s
        if not 0 < heartbeat_s < ttl_s:
            raise ValueError(
                f"lease heartbeat ({heartbeat_s} s) must be positive and below the TTL ({ttl_s} s)"
            )
        deadline = time.monotonic() + wait_s
        seen: tuple[int, bytes] | None = None  # (epoch, raw record) as first seen unchanged
        seen_since = 0.0
        changed = False  # the record changed while watched: its holder is alive
        while True:
            epoch, raw, record = _newest(fs, root, unreadable_ok)
            now = time.monotonic()
            if (epoch, raw) != seen:
                changed = seen is not None and seen[0] == epoch
                seen, seen_since = (epoch, raw), now
            holder_ttl = float(record["ttl_s"]) if record else ttl_s
            state = None if epoch == 0 else ("unreadable" if record is None else lease_state(record))
            stopped = now - seen_since >= holder_ttl
            if (
                epoch == 0
                or state in ("released", "dead")
                or (record is not None and _same_process(record))
                or stopped
            ):
                new = _new_record(epoch + 1, owner, ttl_s, heartbeat_s)
                data = json.dumps(new, indent=1, sort_keys=True).encode()
                if fsio.create_if_absent(fs, fsio.join(root, epoch_file(epoch + 1)), data):
                    lease = cls(fs, root, new)
                    lease.took_over = record if state not in (None, "released") else None
                    lease.start_heartbeat()
                    return lease
                continue  # another build took this epoch first: look again
            watching = state in ("quiet", "unreadable") and not changed
            if now >= deadline and not watching:
                if record is None:
                    raise DamagedOutput(f"{uri or root}: the lease record of epoch {epoch} is unreadable")
                raise OutputBusy(
                    f"{uri or root} is being built by {describe(record)}; wait for it (build --wait"
                    " SECONDS), or, if that build is gone, run again: a lease whose heartbeat has"
                    " stopped for its TTL is taken over automatically"
                )
            time.sleep(POLL_S)

    # -- heartbeat

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(
            target=self._beat, name=f"faceshard-lease-{self.ref.epoch}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(float(self.record["heartbeat_s"])):
            try:
                self.renew()
            except StorageError as exc:
                self.lost = str(exc)
                return
            except Exception:  # a transient outage: the next beat tries again
                continue

    def renew(self) -> None:
        """Beat: count up and stamp the record; StorageError once another build took over."""
        check(self.fs, self.root, self.ref)
        now = time.time()
        self.record = {
            **self.record,
            "beat": int(self.record["beat"]) + 1,
            "heartbeat_at": now,
            "expires_at": now + self.ref.ttl_s,
        }
        self._write()

    def release(self) -> None:
        """Mark the lease released (the next build takes it at once); a lost lease is left alone."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            check(self.fs, self.root, self.ref)
        except StorageError:
            return
        self.record = {**self.record, "released": True, "released_at": time.time()}
        self._write()

    def _write(self) -> None:
        data = json.dumps(self.record, indent=1, sort_keys=True).encode()
        fsio.put_bytes(
            self.fs, fsio.join(self.root, epoch_file(self.ref.epoch)), data, fsio.join(self.root, LEASE_DIR)
        )


def check(fs: AbstractFileSystem, root: str, ref: LeaseRef | None) -> None:
    """Whether `ref` is still the newest, unreleased lease (heartbeat and release use it; commits
    are fenced by the log, not by this check)."""
    if ref is None:
        raise StorageError(f"{root}: this writer holds no lease; open the output with Output.open")
    if fsio.retrying(fs.exists, fsio.join(root, epoch_file(ref.epoch + 1))):
        raise StorageError(f"{root}: superseded: this build's lease (epoch {ref.epoch}) was taken over")
    record = read_record(fs, root, ref.epoch)
    if record.get("token") != ref.token:
        raise StorageError(f"{root}: lease epoch {ref.epoch} belongs to another build")
    if record.get("released"):
        raise StorageError(f"{root}: this build's lease (epoch {ref.epoch}) was released")


def _newest(
    fs: AbstractFileSystem, root: str, unreadable_ok: bool
) -> tuple[int, bytes, dict[str, Any] | None]:
    """(epoch, raw bytes, validated record or None if unreadable and `unreadable_ok`); epoch 0: none."""
    epoch = _newest_epoch(fs, root)
    if epoch == 0:
        return 0, b"", None
    raw = fsio.read_optional(fs, fsio.join(root, epoch_file(epoch))) or b""
    try:
        return epoch, raw, read_record(fs, root, epoch)
    except StorageError:
        if unreadable_ok:
            return epoch, raw, None
        raise


def _same_process(record: dict[str, Any]) -> bool:
    """A lease held by this very process (an earlier Output.open here): re-opening takes it over."""
    return record.get("host") == host_id() and int(record.get("pid", -1)) == os.getpid()


def _new_record(epoch: int, owner: str | None, ttl_s: float, heartbeat_s: float) -> dict[str, Any]:
    now = time.time()
    pid = os.getpid()
    return {
        "epoch": epoch,
        "token": uuid.uuid4().hex,
        "owner": owner or _user(),
        "host": host_id(),
        "pid": pid,
        "pid_start": _process_start(pid),
        "acquired_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "heartbeat_at": now,
        "expires_at": now + ttl_s,
        "ttl_s": float(ttl_s),
        "heartbeat_s": float(heartbeat_s),
        "beat": 0,
        "released": False,
    }


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _newest_epoch(fs: AbstractFileSystem, root: str) -> int:
    """The newest lease epoch (0: none). The listing is a hint; later epochs are probed directly."""
    listed = [
        int(m.group(1))
        for p in fsio.list_files(fs, fsio.join(root, LEASE_DIR))
        if (m := _EPOCH_FILE.search(p))
    ]
    epoch = max(listed, default=0)
    while fsio.retrying(fs.exists, fsio.join(root, epoch_file(epoch + 1))):
        epoch += 1
    return epoch
