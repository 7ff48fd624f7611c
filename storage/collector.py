"""The collector: the one function in faceshard that deletes anything from an output.

`delete` removes a path only if all of these hold, checked against a fresh replay of the log:
  1. it is relative to the output root after normalisation (no `..`, not absolute);
  2. it is a name faceshard writes (storage/records.py): a user's `part-0.parquet`, notes or videos
     never match, whatever folder they sit in;
  3. no winning record names it now (a marker's files, an unpublished marker's staging folder, the
     current plan's Parquet);
  4. no live lease can still write it: it was released (a winning record named it and no longer
     does, see storage/log.py), or its writer's epoch is older than the newest epoch in the log.
Each of 3 and 4, once true, stays true whatever is appended to the log later, so a collector that
was paused between deciding and deleting (and has since been superseded) still deletes only dead
files. Everything it removes is logged (logger `faceshard.storage.collector`).
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable

from fsspec import AbstractFileSystem

from faceshard.faults import maybe_fault
from faceshard.storage import fsio
from faceshard.storage.lease import LEASE_DIR
from faceshard.storage.log import LogState, refresh
from faceshard.storage.records import (
    DATA_FILE_RE,
    LEASE_FILE_RE,
    PLAN_FILE_RE,
    SIDE_TABLE_NAMES,
    STAGING_ENTRY_RE,
    STATE_DIR,
    TABLE_NAMES,
)

log = logging.getLogger(__name__)
KEEP_EPOCHS = 3  # lease records of this many newest epochs stay (status shows the last holders)


def normalise(relative: str) -> str | None:
    """The path relative to the root, or None for an absolute path or one that leaves the root."""
    if not relative or relative.startswith("/") or "\\" in relative:
        return None
    norm = posixpath.normpath(relative)
    if norm.startswith("../") or norm in ("..", ".") or norm != relative.rstrip("/"):
        return None
    return norm


def writer_epoch(relative: str) -> int | None:
    """The epoch of the writer of a faceshard-named path; None for any other name."""
    for pattern, group in ((DATA_FILE_RE, 3), (PLAN_FILE_RE, 1)):
        match = pattern.match(relative)
        if match:
            return int(match.group(group + 1))
    staging = STAGING_ENTRY_RE.match(relative)
    if staging:
        return int(staging.group(2) or staging.group(3))
    return None


def deletable(relative: str, state: LogState) -> str | None:
    """Why `relative` may not be deleted under `state`, or None when it may."""
    norm = normalise(relative)
    if norm is None:
        return "not a path under the output root"
    lease = LEASE_FILE_RE.match(norm)
    if lease:
        return None if int(lease.group(1)) <= state.epoch - KEEP_EPOCHS else "a recent lease record"
    epoch = writer_epoch(norm)
    if epoch is None:
        return "not a name faceshard writes"
    if norm in state.referenced():
        return "named by a committed record"
    if norm in state.released or epoch < state.epoch:
        return None
    return "its writer's lease may still be live"


def delete(fs: AbstractFileSystem, root: str, state: LogState, paths: Iterable[str], why: str) -> list[str]:
    """Delete the paths (relative to `root`) that `deletable` allows under a fresh replay; returns them.

    A staging entry goes with everything below it. Refused paths are logged, never an error: the
    caller asked for a cleanup, not for a user's file to go.
    """
    wanted = list(dict.fromkeys(paths))
    if not wanted:
        return []
    maybe_fault("step", "delete")
    refresh(fs, root, state)
    removed = []
    for relative in wanted:
        reason = deletable(relative, state)
        if reason is not None:
            log.info("collector: kept %s (%s)", relative, reason)
            continue
        full = fsio.join(root, relative)
        if STAGING_ENTRY_RE.match(relative):
            fsio.remove_tree(fs, full)
        else:
            fsio.remove_files(fs, [full])
        log.info("collector: deleted %s (%s)", relative, why)
        removed.append(relative)
    return removed


def candidates(fs: AbstractFileSystem, root: str) -> list[str]:
    """Every faceshard-named path present (listing only): what `collect` considers."""
    found: list[str] = []
    for name in (*TABLE_NAMES, *SIDE_TABLE_NAMES):
        found += [p for p in _relative_listing(fs, root, name) if DATA_FILE_RE.match(p)]
    staging = {"/".join(p.split("/")[:3]) for p in _relative_listing(fs, root, f"{STATE_DIR}/staging")}
    found += sorted(p for p in staging if STAGING_ENTRY_RE.match(p))
    found += [p for p in _relative_listing(fs, root, STATE_DIR, recursive=False) if PLAN_FILE_RE.match(p)]
    found += [p for p in _relative_listing(fs, root, LEASE_DIR) if LEASE_FILE_RE.match(p)]
    return found


def collect(fs: AbstractFileSystem, root: str, state: LogState) -> list[str]:
    """Vacuum: delete every faceshard-named file that `deletable` allows (listing says what exists)."""
    return delete(fs, root, state, candidates(fs, root), "vacuum")


def _relative_listing(fs: AbstractFileSystem, root: str, sub: str, recursive: bool = True) -> list[str]:
    base = fsio.join(root, sub)
    if recursive:
        paths = fsio.list_files(fs, base)
    else:
        try:
            paths = [fsio._strip(fs, p) for p in fsio.retrying(fs.ls, base, detail=False)]
        except FileNotFoundError:
            paths = []
    return [p[len(root) + 1 :] for p in paths if p.startswith(root + "/")]
