"""`dataset_status`: what is committed, failed and pending, read from the output's log.

Everything but the failed videos comes from the commits' stats; only shards whose commit counts
`error` videos are opened (four small columns) to list those videos and their reasons. The log is
read tolerantly: an entry that does not validate is reported (file and field) with the shards it
concerned, which status cannot vouch for, and `ok` is False (the CLI exits non-zero).
`verify` re-reads every committed file's Parquet footer and checks its row count and size against
its record.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from faceshard.errors import StorageError
from faceshard.storage import fsio, lease
from faceshard.storage import log as output_log
from faceshard.storage.commit import (
    METADATA_FILE,
    OutputState,
    file_entry,
    is_output,
    locate,
    read_files,
    state_view,
)


def dataset_status(
    uri: str, storage_options: dict[str, Any] | None = None, verify: bool = False
) -> dict[str, Any]:
    """Shards committed / failed / pending, totals, video status histogram, failed videos by reason.

    `ok` is False when any shard or video failed (or, with `verify`, a committed file no longer
    matches its sha256): the CLI exits non-zero on it. Raises StorageError for a non-output URI.
    """
    fs, root = fsio.open_fs(uri, storage_options)
    if not is_output(fs, root):
        raise StorageError(f"{uri}: not a faceshard output (no {METADATA_FILE})")
    log = output_log.replay(fs, root, tolerant=True)
    problems = [{"file": p.path, "error": p.message, "shard": p.shard} for p in log.problems]
    if log.metadata is None and problems:  # nothing can be vouched for: say why
        raise StorageError(" ".join(p["error"] for p in problems))
    state = state_view(log, root)
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
        "warnings": list(meta.get("warnings") or []),
        "stage_seconds": _stage_seconds(state),
        "lease": lease_holder(fs, root),
        "problems": problems,
    }
    if info["lease"] and info["lease"].get("state") == "unreadable":
        problems.append({"file": "lease", "error": info["lease"]["error"], "shard": None})
    if verify:
        info["corrupt_files"] = _verify(fs, root, state)
    unvouched = {p["shard"] for p in problems if p["shard"] is not None}
    unvouched |= {row["shard"] for row in info.get("corrupt_files") or []}
    info["unvouched_shards"] = sorted(unvouched)
    info["ok"] = not (failures or failed_videos or info.get("corrupt_files") or problems)
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
    keys = (
        "owner",
        "host",
        "pid",
        "epoch",
        "acquired_at",
        "heartbeat_at",
        "expires_at",
        "ttl_s",
        "heartbeat_s",
        "beat",
    )
    return {k: record.get(k) for k in keys} | {
        "state": lease.lease_state(record),
        "holder": lease.describe(record),
    }


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
    """Re-read every committed file's footer: missing, unreadable, or rows/bytes unlike its record."""
    bad = []
    for shard, marker in sorted(state.markers.items()):
        for entries in marker["files"].values():
            for entry in entries:
                path = locate(fs, root, file_entry(marker, entry))
                problem = None
                try:
                    size = fsio.retrying(fs.size, path)
                    with fs.open(path, "rb") as handle:
                        rows = pq.ParquetFile(handle).metadata.num_rows
                except FileNotFoundError:
                    problem = "missing"
                except Exception as exc:  # an unreadable footer, whatever pyarrow calls it
                    problem = f"unreadable footer ({type(exc).__name__}: {exc})"
                else:
                    if rows != entry["rows"]:
                        problem = f"{rows} rows, its record says {entry['rows']}"
                    elif size != entry["bytes"]:
                        problem = f"{size} bytes, its record says {entry['bytes']}"
                if problem:
                    bad.append({"shard": shard, "path": entry["path"], "problem": problem})
    return bad
