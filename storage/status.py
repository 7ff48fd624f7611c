"""`dataset_status`: what is committed, failed and pending, read from the commit markers.

Everything but the failed videos comes from the markers' stats; only shards whose marker counts
`error` videos are opened (four small columns) to list those videos and their reasons.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

import pyarrow.compute as pc

from faceshard.errors import StorageError
from faceshard.storage import fsio, lease
from faceshard.storage.commit import REBUILD_FILE, OutputState, file_entry, locate, read_files, read_state


def dataset_status(
    uri: str, storage_options: dict[str, Any] | None = None, verify: bool = False
) -> dict[str, Any]:
    """Shards committed / failed / pending, totals, video status histogram, failed videos by reason.

    `ok` is False when any shard or video failed (or, with `verify`, a committed file no longer
    matches its sha256): the CLI exits non-zero on it. Raises StorageError for a non-output URI.
    """
    fs, root = fsio.open_fs(uri, storage_options)
    state = read_state(fs, root)
    meta = state.metadata
    markers = state.markers
    failures = {shard: rec for shard, rec in state.failures.items() if shard not in markers}
    planned = state.plan["shards_total"] if state.plan else None
    shards_total = planned if planned is not None else len(markers) + len(failures)
    video_status: Counter[str] = Counter()
    for marker in markers.values():
        video_status.update(marker.get("status_counts", {}))
    failed_videos = _failed_videos(fs, root, state)
    info: dict[str, Any] = {
        "uri": uri,
        "fingerprint": state.fingerprint,
        "schema_version": meta.get("schema_version"),
        "faceshard_version": meta.get("faceshard_version"),
        "created_at": meta.get("created_at"),
        "shards_total": shards_total,
        "committed": len(markers),
        "failed": len(failures),
        "pending": max(0, shards_total - len(markers) - len(failures)),
        "videos_total": state.plan["videos_total"] if state.plan else None,
        # Committed videos the last build's manifest did not list (kept until `build --prune`).
        "not_in_manifest": (state.plan or {}).get("not_in_manifest", 0),
        "totals": {
            name: sum(m["rows"][name] for m in markers.values()) for name in ("videos", "faces", "identities")
        }
        | {"bytes": sum(m.get("bytes", 0) for m in markers.values())},
        "video_status": dict(sorted(video_status.items())),
        "failed_shards": [
            {"shard": shard, "error": rec.get("error"), "at": rec.get("at")}
            for shard, rec in sorted(failures.items())
        ],
        "failed_videos": failed_videos,
        "failed_by_reason": dict(Counter(v["error"] for v in failed_videos).most_common()),
        "random_weights": list(meta.get("random_weights") or []),
        "stage_seconds": _stage_seconds(state),
        "lease": lease_holder(fs, root),
        "rebuilding": _rebuilding(fs, root),
    }
    if verify:
        info["corrupt_files"] = _verify(fs, root, state)
    info["ok"] = not (failures or failed_videos or info.get("corrupt_files"))
    return info


def lease_holder(fs: Any, root: str) -> dict[str, Any] | None:
    """Who holds (or last held) the output's lease: owner, host, pid, epoch, heartbeat, state."""
    try:
        found = lease.current(fs, root)
    except StorageError as exc:
        return {"state": "unreadable", "error": str(exc)}
    if found is None:
        return None
    _, record = found
    keys = ("owner", "host", "pid", "epoch", "acquired_at", "heartbeat_at", "expires_at", "ttl_s")
    return {k: record.get(k) for k in keys} | {
        "state": lease.lease_state(record),
        "holder": lease.describe(record),
    }


def _rebuilding(fs: Any, root: str) -> dict[str, Any] | None:
    """A --rebuild that was interrupted: {"from", "to", "started_at"} (finished by the next open)."""
    data = fsio.read_optional(fs, fsio.join(root, REBUILD_FILE))
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return {"error": "unreadable rebuild record"}
    return value if isinstance(value, dict) else {"error": "unreadable rebuild record"}


def _failed_videos(fs: Any, root: str, state: OutputState) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for _, marker in sorted(state.markers.items()):
        if not marker.get("status_counts", {}).get("error"):
            continue
        entries = [file_entry(marker, entry) for entry in marker["files"]["videos"]]
        videos = read_files(fs, root, entries, columns=["video_id", "path", "status", "error"])
        if videos is None:
            continue
        failed = videos.filter(pc.equal(videos["status"], "error"))
        for row in failed.select(["video_id", "path", "error", "shard"]).to_pylist():
            out.append(row)
    return out


def _stage_seconds(state: OutputState) -> dict[str, float]:
    """Sum of the numeric per-stage seconds the workers put in their markers' stats."""
    total: Counter[str] = Counter()
    for marker in state.markers.values():
        seconds = (marker.get("stats") or {}).get("stage_seconds") or {}
        total.update({k: float(v) for k, v in seconds.items() if isinstance(v, int | float)})
    return {k: round(v, 3) for k, v in sorted(total.items())}


def _verify(fs: Any, root: str, state: OutputState) -> list[dict[str, Any]]:
    """Re-hash every committed file (reads all data): size or sha256 mismatches and missing files."""
    bad = []
    for shard, marker in sorted(state.markers.items()):
        for entries in marker["files"].values():
            for entry in entries:
                path = locate(fs, root, file_entry(marker, entry))
                data = fsio.read_optional(fs, path)
                if data is None:
                    bad.append({"shard": shard, "path": entry["path"], "problem": "missing"})
                elif len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    bad.append({"shard": shard, "path": entry["path"], "problem": "checksum mismatch"})
    return bad
