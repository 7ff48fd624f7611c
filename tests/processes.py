"""Servers a test starts as it would in production (`prefect server start`, `ray start --head`),
each in its own session so that stopping it stops everything it spawned and nothing else on a
machine other engineers' clusters share."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(ready: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s\n{tail}")
        time.sleep(0.5)


def session_members(session: int) -> list[int]:
    """Live (not zombie) processes of `session`: a leader started with `start_new_session=True` and
    whatever it spawned, which Ray's workers are even with process groups of their own."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        state, sid = fields[0], int(fields[3])
        if sid == session and state != "Z":
            members.append(int(entry.name))
    return members


def stop_session(leader: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM every process of the leader's session, SIGKILL what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_members(leader.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while session_members(leader.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        leader.poll()
        if not session_members(leader.pid):
            break
    leader.wait(timeout=10)


def stacks_of_session(session: int, limit: int = 40_000) -> str:
    """Every thread's Python stack in every live process of `session` (py-spy, installed with
    ray[default]) and of this process: what a test that timed out shows of where the time went."""
    parts = []
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    for pid in session_members(session):
        try:
            args = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
            dumped = subprocess.run(
                [spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30
            )
            parts.append(f"== pid {pid}: {args}\n{dumped.stdout}{dumped.stderr}")
        except (OSError, subprocess.SubprocessError) as exc:
            parts.append(f"== pid {pid}: no stack ({exc})")
    with tempfile.TemporaryFile("w+") as handle:
        faulthandler.dump_traceback(handle, all_threads=True)
        handle.seek(0)
        parts.append(f"== the test process ({os.getpid()})\n{handle.read()}")
    return "\n".join(parts)[-limit:]
