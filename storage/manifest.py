"""Manifest intake: a CSV/Parquet list of videos → checked `VideoTask`s → deterministic shards.

Paths are the one thing a manifest can use against us: every video path must lie under a declared
root (default: the manifest's directory). A path outside is never opened; its task carries the
reason in `error` and becomes an `error` row, so the refusal is visible in the output and status.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from faceshard.errors import ManifestError
from faceshard.records import VideoTask
from faceshard.storage.fsio import is_local, open_fs, read_bytes

REQUIRED_COLUMNS = ("path", "label")
LABELS = {"0": 0, "1": 1, "real": 0, "fake": 1, "false": 0, "true": 1}


@dataclass(frozen=True)
class ShardPlan:
    """A group of consecutive manifest videos processed and committed together."""

    shard_id: int
    videos: list[VideoTask]


@dataclass(frozen=True)
class _Location:
    """Where a manifest (or root) lives: a local directory, or an fsspec URL prefix."""

    protocol: str | None  # None = local disk
    path: str

    def join(self, relative: str) -> _Location:
        if self.protocol is None:
            return _Location(None, os.path.normpath(os.path.join(self.path, relative)))
        return _Location(self.protocol, posixpath.normpath(posixpath.join(self.path, relative)))

    def resolved(self) -> str:
        """Symlinks and '..' resolved on local disk, normalised elsewhere: what containment compares."""
        return os.path.realpath(self.path) if self.protocol is None else posixpath.normpath(self.path)

    def url(self) -> str:
        return self.path if self.protocol is None else f"{self.protocol}://{self.path.lstrip('/')}"

    def contains(self, other: _Location) -> bool:
        if self.protocol != other.protocol:
            return False
        root, target = self.resolved(), other.resolved()
        return target == root or target.startswith(root.rstrip("/") + "/")


def read_manifest(
    uri: str, roots: Sequence[str] | None = None, storage_options: dict[str, Any] | None = None
) -> list[VideoTask]:
    """Read a CSV or Parquet manifest with at least `path,label` into VideoTasks, in manifest order.

    Optional columns: `method`, `split` (missing → 'all'), `video_id` (missing → stem + hash of the
    path relative to the manifest, stable across machines), `source`, `dataset` (SPEC §9). Relative paths resolve against the
    manifest's directory. Raises ManifestError on missing columns, bad labels, duplicate ids.
    """
    fs, path = open_fs(uri, storage_options)
    frame = _read_frame(read_bytes(fs, path), uri)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"manifest {uri}: missing column(s) {', '.join(missing)}; found: {', '.join(frame.columns)}"
        )
    protocol = None if is_local(fs) else _protocol(fs)
    base = _Location(protocol, posixpath.dirname(path) if protocol else os.path.dirname(path))
    allowed = [_root_location(r) for r in roots] if roots else [base]

    records = frame.to_dicts()
    tasks: list[VideoTask] = []
    bad_labels: list[str] = []
    for number, row in enumerate(records, start=2 if _is_csv(uri) else 1):
        raw_path = _text(row.get("path"))
        if raw_path is None:
            raise ManifestError(f"manifest {uri}: row {number} has an empty path")
        label = _label(row.get("label"))
        if label is None:
            bad_labels.append(f"row {number}: {row.get('label')!r}")
            continue
        target, relative = _locate(raw_path, base, protocol)
        error = None
        if not any(root.contains(target) for root in allowed):
            shown = ", ".join(r.url() for r in allowed)
            error = f"path outside allowed roots: {target.url()} (roots: {shown})"
        tasks.append(
            VideoTask(
                video_id=_text(row.get("video_id")) or derive_video_id(relative),
                path=target.url(),
                label=label,
                method=_text(row.get("method")),
                split=_text(row.get("split")) or "all",
                error=error,
                source=_text(row.get("source")),
                dataset=_text(row.get("dataset")),
            )
        )
    if bad_labels:
        shown = "; ".join(bad_labels[:5]) + (f"; … {len(bad_labels) - 5} more" if len(bad_labels) > 5 else "")
        raise ManifestError(f"manifest {uri}: labels must be 0/1 or real/fake: {shown}")
    duplicates = [vid for vid, n in Counter(t.video_id for t in tasks).items() if n > 1]
    if duplicates:
        raise ManifestError(
            f"manifest {uri}: duplicate video ids ({len(duplicates)}): {', '.join(duplicates[:10])}"
            " — give each row a unique video_id (or a unique path)"
        )
    return tasks


def plan_shards(videos: Sequence[VideoTask], shard_size: int) -> list[ShardPlan]:
    """Consecutive chunks of `shard_size` videos in manifest order: the same manifest, the same shards."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [
        ShardPlan(shard_id=i, videos=list(videos[start : start + shard_size]))
        for i, start in enumerate(range(0, len(videos), shard_size))
    ]


def derive_video_id(relative_path: str) -> str:
    """A readable, stable id: file stem + 8 hex of the path relative to the manifest."""
    normalised = relative_path.replace(os.sep, "/")
    stem = posixpath.splitext(posixpath.basename(normalised))[0] or "video"
    return f"{stem}-{hashlib.sha256(normalised.encode()).hexdigest()[:8]}"


def _read_frame(data: bytes, uri: str) -> pl.DataFrame:
    try:
        if _is_csv(uri):
            return pl.read_csv(io.BytesIO(data), infer_schema=False)
        frame = pl.read_parquet(io.BytesIO(data))
    except Exception as exc:
        raise ManifestError(
            f"manifest {uri}: cannot read it as {'CSV' if _is_csv(uri) else 'Parquet'}: {exc}"
        ) from None
    return frame.with_columns(pl.all().cast(pl.String))


def _is_csv(uri: str) -> bool:
    return not uri.lower().endswith((".parquet", ".pq"))


def _protocol(fs: Any) -> str:
    protocol = fs.protocol
    return protocol[0] if isinstance(protocol, tuple | list) else protocol


def _root_location(root: str) -> _Location:
    if "://" in root and not root.startswith("file://"):
        fs, path = open_fs(root)
        return _Location(_protocol(fs), "/" + path.lstrip("/") if _protocol(fs) == "memory" else path)
    local = root.removeprefix("file://")
    return _Location(None, os.path.abspath(local))


def _locate(raw: str, base: _Location, protocol: str | None) -> tuple[_Location, str]:
    """(absolute location, path relative to the manifest's directory for id derivation)."""
    if raw.startswith("file://"):
        raw = raw.removeprefix("file://")
    if "://" in raw:
        scheme, _, rest = raw.partition("://")
        rest = "/" + rest.lstrip("/") if scheme == "memory" else rest
        target = _Location(scheme, posixpath.normpath(rest))
    elif protocol is None and os.path.isabs(raw):
        target = _Location(None, os.path.normpath(raw))
    elif protocol is not None and raw.startswith("/"):
        target = _Location(protocol, posixpath.normpath(raw))
    else:
        target = base.join(raw)
    if target.protocol == base.protocol:
        relative = (
            os.path.relpath(target.path, base.path)
            if base.protocol is None
            else posixpath.relpath(target.path, base.path)
        )
    else:
        relative = target.url()
    return target, relative


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _label(value: Any) -> int | None:
    text = _text(value)
    if text is None:
        return None
    text = text.lower()
    if text.endswith(".0"):
        text = text[:-2]
    return LABELS.get(text)
