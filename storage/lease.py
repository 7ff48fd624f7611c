"""One writer per output: a lease taken by atomic create-if-absent, heartbeated, fenced by epoch.

Lease records live at `_faceshard/lease/epoch-00000007.json`; the highest epoch is the current
lease. Taking the lease (first time, after a release, or over a stale holder) is creating the file
of the next epoch with a create-if-absent write (`fsio.create_if_absent`: local `link()`, S3
`If-None-Match: *`), so of two builds racing for epoch N+1 exactly one wins, and the epoch counts
every change of hands. Only the holder rewrites its own epoch file (heartbeat, release); nobody
ever overwrites another epoch's file, so taking over never races a heartbeat.

Fencing: a writer (the driver or any worker holding a pickled `LeaseRef`) checks right before its
commit point that its epoch is still the newest, its token still the holder's, and the lease
still valid for at least `COMMIT_MARGIN` of its TTL. A build whose lease was taken over (expired,
or its process died) therefore cannot commit; the residual window is the one PUT between the
check and the marker, which a takeover of a live-looking holder waits out (`TAKEOVER_SETTLE_S`).
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

LEASE_DIR = "_faceshard/lease"
DEFAULT_TTL_S = 60.0
COMMIT_MARGIN = 0.25  # a commit needs this fraction of the TTL left on the lease
CLOCK_SKEW_S = 5.0  # hosts' clocks may disagree this much before a lease counts as expired
TAKEOVER_SETTLE_S = 2.0
POLL_S = 0.5
KEEP_EPOCHS = 3
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
    """'alice on host-a pid 4242 (epoch 7), heartbeat 3 s ago, expires in 57 s'."""
    now = time.time() if now is None else now
    beat = now - float(record.get("heartbeat_at", 0))
    left = float(record.get("expires_at", 0)) - now
    when = f"expires in {left:.0f} s" if left > 0 else f"expired {-left:.0f} s ago"
    return (
        f"{record.get('owner', '?')} on {record.get('host', '?')} pid {record.get('pid', '?')}"
        f" (epoch {record.get('epoch', '?')}, heartbeat {beat:.0f} s ago, {when})"
    )


def lease_state(record: dict[str, Any], now: float | None = None) -> str:
    """'released', 'expired' (heartbeat older than its TTL plus clock skew), 'dead' or 'held'."""
    now = time.time() if now is None else now
    if record.get("released"):
        return "released"
    if now > float(record.get("expires_at", 0)) + CLOCK_SKEW_S:
        return "expired"
    if record.get("host") == host_id() and not _process_alive(
        int(record.get("pid", -1)), record.get("pid_start")
    ):
        return "dead"
    return "held"


def current(fs: AbstractFileSystem, root: str) -> tuple[int, dict[str, Any]] | None:
    """The newest lease (epoch, record), or None when the output never had one.

    The listing is only a hint: the epochs after the newest listed one are probed directly, so a
    listing that lags behind a takeover cannot hide it.
    """
    listed = [
        int(m.group(1))
        for p in fsio.list_files(fs, fsio.join(root, LEASE_DIR))
        if (m := _EPOCH_FILE.search(p))
    ]
    epoch = max(listed, default=0)
    while fsio.retrying(fs.exists, fsio.join(root, epoch_file(epoch + 1))):
        epoch += 1
    if epoch == 0:
        return None
    return epoch, read_record(fs, root, epoch)


def read_record(fs: AbstractFileSystem, root: str, epoch: int) -> dict[str, Any]:
    path = fsio.join(root, epoch_file(epoch))
    data = fsio.read_bytes(fs, path)
    try:
        record = json.loads(data)
    except ValueError as exc:
        raise DamagedOutput(
            f"{path}: the output's lease record is unreadable ({exc}); if no build is running on this"
            f" output, run `faceshard repair {root}` to retire it"
        ) from None
    if not isinstance(record, dict):
        raise DamagedOutput(f"{path}: the output's lease record is not a JSON object")
    return record


class Lease:
    """The held lease of one build: heartbeats in a daemon thread until `release`."""

    def __init__(self, fs: AbstractFileSystem, root: str, record: dict[str, Any]) -> None:
        self.fs, self.root, self.record = fs, root, record
        self.ref = LeaseRef(int(record["epoch"]), str(record["token"]), float(record["ttl_s"]))
        self.lost: str | None = None
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
        wait_s: float = 0.0,
        uri: str | None = None,
    ) -> Lease:
        """Take the lease, waiting up to `wait_s` for a live holder; OutputBusy names the holder."""
        deadline = time.monotonic() + wait_s
        while True:
            found = current(fs, root)
            previous_state = None if found is None else lease_state(found[1])
            if found is None or previous_state != "held" or _same_process(found[1]):
                epoch = 1 if found is None else found[0] + 1
                record = _new_record(epoch, owner, ttl_s)
                data = json.dumps(record, indent=1, sort_keys=True).encode()
                if fsio.create_if_absent(fs, fsio.join(root, epoch_file(epoch)), data):
                    if previous_state in ("expired", "dead"):
                        time.sleep(TAKEOVER_SETTLE_S)  # let a fenced writer's last check-then-PUT land
                    lease = cls(fs, root, record)
                    lease._forget_old_epochs()
                    lease.start_heartbeat()
                    return lease
                continue  # another build took this epoch first: look again
            if time.monotonic() >= deadline:
                raise OutputBusy(
                    f"{uri or root} is being built by {describe(found[1])}; wait for it (build --wait"
                    " SECONDS), or, if that build is gone, run again once its lease expires"
                    " (a stale lease is taken over automatically)"
                )
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))

    # -- heartbeat

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(
            target=self._beat, name=f"faceshard-lease-{self.ref.epoch}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ref.ttl_s / 4):
            try:
                self.renew()
            except StorageError as exc:
                self.lost = str(exc)
                return
            except Exception:  # a transient outage: the next beat tries again, expiry bounds the damage
                continue

    def renew(self) -> None:
        """Push the expiry forward; StorageError once another build took over."""
        check(self.fs, self.root, self.ref, for_commit=False)
        now = time.time()
        self.record = {**self.record, "heartbeat_at": now, "expires_at": now + self.ref.ttl_s}
        self._write()

    def release(self) -> None:
        """Mark the lease released (the next build takes it at once); a lost lease is left alone."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            check(self.fs, self.root, self.ref, for_commit=False)
        except StorageError:
            return
        self.record = {**self.record, "released": True, "released_at": time.time()}
        self._write()

    def _write(self) -> None:
        data = json.dumps(self.record, indent=1, sort_keys=True).encode()
        fsio.put_bytes(
            self.fs, fsio.join(self.root, epoch_file(self.ref.epoch)), data, fsio.join(self.root, LEASE_DIR)
        )

    def _forget_old_epochs(self) -> None:
        old = [
            p
            for p in fsio.list_files(self.fs, fsio.join(self.root, LEASE_DIR))
            if (m := _EPOCH_FILE.search(p)) and int(m.group(1)) <= self.ref.epoch - KEEP_EPOCHS
        ]
        fsio.remove_files(self.fs, old)


def check(fs: AbstractFileSystem, root: str, ref: LeaseRef | None, *, for_commit: bool = True) -> None:
    """Fencing: raise StorageError unless `ref` is the newest, unreleased lease and, `for_commit`,
    still valid for COMMIT_MARGIN of its TTL (a renewal may revive an expired lease nobody took)."""
    if ref is None:
        raise StorageError(f"{root}: this writer holds no lease; open the output with Output.open")
    if fsio.retrying(fs.exists, fsio.join(root, epoch_file(ref.epoch + 1))):
        newer = current(fs, root)
        holder = describe(newer[1]) if newer else "another build"
        raise StorageError(
            f"{root}: this build's lease (epoch {ref.epoch}) was taken over by {holder};"
            " refusing to commit (a superseded build must not write)"
        )
    record = read_record(fs, root, ref.epoch)
    if record.get("token") != ref.token:
        raise StorageError(f"{root}: lease epoch {ref.epoch} belongs to another build; refusing to commit")
    if record.get("released"):
        raise StorageError(f"{root}: this build's lease (epoch {ref.epoch}) was released; refusing to commit")
    left = float(record["expires_at"]) - time.time()
    if for_commit and left < ref.ttl_s * COMMIT_MARGIN:
        raise StorageError(
            f"{root}: this build's lease (epoch {ref.epoch}) has {left:.0f} s left (heartbeats stopped?);"
            " refusing to commit, another build may take it over"
        )


def _same_process(record: dict[str, Any]) -> bool:
    """A lease held by this very process (an earlier Output.open here): re-opening takes it over."""
    return record.get("host") == host_id() and int(record.get("pid", -1)) == os.getpid()


def _new_record(epoch: int, owner: str | None, ttl_s: float) -> dict[str, Any]:
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
        "ttl_s": ttl_s,
        "released": False,
    }


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"
