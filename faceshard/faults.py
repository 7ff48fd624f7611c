"""Failpoints for tests of the failure paths (a shard that dies, a build killed mid-way).

Off unless `FACESHARD_FAULTS` is set, e.g. `commit:2=raise,video:clip_003=sleep:1.5`:
`site:key=action` items, where site is `video` (key: video id), `commit` (key: shard id) or `put`
(key: the file name a storage write publishes) or `step` (key: a step of a commit, see
storage/commit.py: lease, check, data, commit, publish, plan, record, delete), and action is `raise`,
`sleep:SECONDS`, `fail-once:FLAGFILE` (a transient ConnectionError the first time, across processes:
the flag file records that it fired) or `stop-once:FLAGFILE` (the process SIGSTOPs itself the first
time: a pause that outlives the lease, for a test to SIGCONT). `*` as key matches every key.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


class InjectedFault(RuntimeError):
    """Raised by a `raise` failpoint."""


def _parse(spec: str) -> dict[tuple[str, str], str]:
    rules: dict[tuple[str, str], str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        target, _, action = item.partition("=")
        site, _, key = target.partition(":")
        rules[(site, key)] = action
    return rules


def maybe_fault(site: str, key: str) -> None:
    """Act on the failpoint for (site, key) if one is configured; a no-op otherwise."""
    spec = os.environ.get("FACESHARD_FAULTS")
    if not spec:
        return
    rules = _parse(spec)
    action = rules.get((site, key)) or rules.get((site, "*"))
    if action is None:
        return
    if action == "raise":
        raise InjectedFault(f"injected fault at {site}:{key}")
    if action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))
    if action.startswith("fail-once:"):
        flag = Path(action.split(":", 1)[1])
        try:
            flag.open("x").close()
        except FileExistsError:
            return
        raise ConnectionError(f"injected transient fault at {site}:{key}")
    if action.startswith("stop-once:"):
        try:
            Path(action.split(":", 1)[1]).open("x").close()
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGSTOP)
