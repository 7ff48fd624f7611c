"""Manifest intake: a CSV/Parquet list of videos → checked `VideoTask`s → deterministic shards.

Paths are the one thing a manifest can use against us: every video path must lie under a declared
root (default: the manifest's directory). A path outside is never opened; its task carries the
reason in `error` and becomes an `error` row, so the refusal is visible in the output and status.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from faceshard.errors import ManifestError

if TYPE_CHECKING:
    import polars as pl
from faceshard.records import VideoTask
from faceshard.storage.fsio import is_local, open_fs, read_bytes

REQUIRED_COLUMNS = ("path", "label")
LABELS = {"0": 0, "1": 1, "real": 0, "fake": 1, "false": 0, "true": 1}


@dataclass(frozen=True)
class ShardPlan:
    """A group of consecutive manifest videos processed and committed together."""

    shard_id: int
    videos: list[VideoTask]
    # Sources of this shard's fakes that are committed in other shards of the output (id → shard):
    # a source-aware worker reads their detections back instead of decoding them (tasks/source_store.py).
    sources: dict[str, int] = field(default_factory=dict)


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


@dataclass(frozen=True)
class Manifest:
    """A checked manifest held as one columnar frame, one row per video, ids unique.

    Columns: `video_id`, `path` (resolved URL), `label` (0/1), `method`, `split` and `error` (a
    planning-time refusal, or null). At 10⁶ rows this stays small; `VideoTask`s are made only for
    the shards a build actually runs (`shard_plans`).
    """

    uri: str
    frame: pl.DataFrame

    def __len__(self) -> int:
        return self.frame.height

    @property
    def video_ids(self) -> pl.Series:
        return self.frame["video_id"]

    def tasks(self) -> list[VideoTask]:
        """Every row as a VideoTask, in manifest order."""
        return [_task(row) for row in self.frame.select(TASK_COLUMNS).iter_rows(named=True)]

    def shard_plans(self, shards: pl.DataFrame) -> list[ShardPlan]:
        """ShardPlans for a (shard, video_id) frame, in its order; every id must be in the manifest."""
        import polars as pl

        joined = shards.select("shard", "video_id").join(
            self.frame.select(TASK_COLUMNS), on="video_id", how="left", maintain_order="left"
        )
        missing = joined.filter(pl.col("path").is_null())["video_id"]
        if missing.len():
            raise ManifestError(f"manifest {self.uri}: planned videos not in it: {missing.head(5).to_list()}")
        plans: dict[int, list[VideoTask]] = {}
        for row in joined.iter_rows(named=True):
            plans.setdefault(row.pop("shard"), []).append(_task(row))
        return [ShardPlan(shard_id=shard, videos=videos) for shard, videos in plans.items()]

    def path_problems(self, storage_options: dict[str, Any] | None = None, shown: int = 5) -> dict[str, Any]:
        """What a build would turn into `error` rows for their paths alone: files outside the allowed
        roots (never opened) and files that do not exist (checked now; one stat per video), with a
        few examples of each. `build --dry-run` prints it."""
        import polars as pl

        outside = self.frame.filter(pl.col("error").is_not_null())["path"]
        inside = self.frame.filter(pl.col("error").is_null())["path"].to_list()
        missing = [p for p in inside if not _exists(p, storage_options)]
        return {
            "outside_roots": outside.len(),
            "outside_roots_examples": outside.head(shown).to_list(),
            "missing_files": len(missing),
            "missing_files_examples": missing[:shown],
        }


def _exists(url: str, storage_options: dict[str, Any] | None) -> bool:
    if "://" not in url:
        return os.path.isfile(url)
    fs, path = open_fs(url, storage_options)
    return bool(fs.isfile(path))


TASK_COLUMNS = ("video_id", "path", "label", "method", "split", "error", "source", "dataset")
OPTIONAL_COLUMNS = ("method", "split", "video_id", "source", "dataset")


def _task(row: dict[str, Any]) -> VideoTask:
    return VideoTask(**{name: row[name] for name in TASK_COLUMNS})


def read_manifest(
    uri: str, roots: Sequence[str] | None = None, storage_options: dict[str, Any] | None = None
) -> list[VideoTask]:
    """`load_manifest` as VideoTasks in manifest order (small manifests and tests)."""
    return load_manifest(uri, roots, storage_options).tasks()


def load_manifest(
    uri: str, roots: Sequence[str] | None = None, storage_options: dict[str, Any] | None = None
) -> Manifest:
    """Read and check a CSV or Parquet manifest with at least `path,label`, column by column.

    Optional columns: `method`, `split` (missing → 'all'), `video_id` (missing → the path relative to
    the manifest, `/`-separated: readable, the same on every machine and mount, and unique because
    paths are), `source`, `dataset` (SPEC §9). Relative paths resolve against the manifest's
    directory. Raises ManifestError on missing columns, empty paths, bad labels, duplicate ids.
    """
    import polars as pl

    fs, path = open_fs(uri, storage_options)
    frame = _read_frame(_read_manifest_bytes(fs, path, uri), uri)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"manifest {uri}: missing column(s) {', '.join(missing)}; found: {', '.join(frame.columns)}."
            " A manifest is a CSV or Parquet with columns path,label[,method,split,video_id]"
        )
    if frame.height == 0:
        raise ManifestError(f"manifest {uri} lists no videos (a header and no rows); add one row per video")
    protocol = None if is_local(fs) else _protocol(fs)
    base = _Location(protocol, posixpath.dirname(path) if protocol else os.path.dirname(path))
    allowed = [_root_location(r) for r in roots] if roots else [base]
    first_row = 2 if _is_csv(uri) else 1

    frame = frame.select(
        pl.col("label"),
        *(
            _blank_to_null(pl.col(c)).alias(c) if c in frame.columns else pl.lit(None, pl.String).alias(c)
            for c in ("path", *OPTIONAL_COLUMNS)
        ),
    ).with_row_index("row", first_row)
    empty = frame.filter(pl.col("path").is_null())["row"]
    if empty.len():
        raise ManifestError(f"manifest {uri}: row {empty[0]} has an empty path")
    frame = frame.with_columns(_label_expr(pl.col("label")).alias("label_value"))
    bad = frame.filter(pl.col("label_value").is_null())
    if bad.height:
        shown = "; ".join(f"row {r}: {v!r}" for r, v in bad.head(5).select("row", "label").iter_rows())
        more = f"; … {bad.height - 5} more" if bad.height > 5 else ""
        raise ManifestError(f"manifest {uri}: labels must be 0/1 or real/fake: {shown}{more}")

    located = _locate_all(frame["path"], base, protocol)
    shown_roots = ", ".join(r.url() for r in allowed)
    frame = pl.concat([frame, located], how="horizontal").select(
        # One Unicode form (NFC) for every id: "é" typed or decomposed is one video, so two
        # spellings of one id are a duplicate, and a re-typed manifest matches the output's ids.
        pl.col("video_id").fill_null(pl.col("relative")).str.normalize("NFC"),
        pl.col("url").alias("path"),
        pl.col("label_value").alias("label"),
        pl.col("method"),
        pl.col("split").fill_null("all"),
        pl.when(_inside_any(allowed))
        .then(pl.lit(None, pl.String))
        .otherwise(pl.format("path outside allowed roots: {} (roots: {})", "url", pl.lit(shown_roots)))
        .alias("error"),
        pl.col("source"),
        pl.col("dataset"),
    )
    duplicates = frame.filter(pl.col("video_id").is_duplicated())["video_id"].unique(maintain_order=True)
    if duplicates.len():
        raise ManifestError(
            f"manifest {uri}: duplicate video ids ({duplicates.len()}): {', '.join(duplicates.head(10))}"
            " — give each row a unique video_id (or a unique path)"
        )
    return Manifest(uri, frame)


def plan_shards(videos: Sequence[VideoTask], shard_size: int) -> list[ShardPlan]:
    """Consecutive chunks of `shard_size` videos in the given order: the same videos, the same shards."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [
        ShardPlan(shard_id=i, videos=list(videos[start : start + shard_size]))
        for i, start in enumerate(range(0, len(videos), shard_size))
    ]


def derive_video_id(relative_path: str) -> str:
    """The id of a row without one: its path relative to the manifest, `/`-separated.

    Readable and collision-free by construction (two rows with one path are one video), unlike a
    short hash: ForgeryNet names every file `video.mp4`, and 32 hash bits collided 5× in 221,247 rows.
    """
    return relative_path.replace(os.sep, "/")


# Paths that are not plain relative ones ("a/b.mp4"): these rows take the per-row `_locate`.
_NEEDS_NORMALISING = r"://|^/|^file:|(?:^|/)\.\.?(?:/|$)|//|/$"


def _blank_to_null(column: pl.Expr) -> pl.Expr:
    import polars as pl

    text = column.str.strip_chars()
    return pl.when(text != "").then(text)


def _label_expr(column: pl.Expr) -> pl.Expr:
    import polars as pl

    text = column.str.strip_chars().str.to_lowercase().str.replace(r"\.0$", "")
    return text.replace_strict(LABELS, default=None, return_dtype=pl.Int8)


def _locate_all(paths: pl.Series, base: _Location, protocol: str | None) -> pl.DataFrame:
    """Per row: `url` to open, `relative` (for ids), `protocol` ('' = local), `resolved` (containment).

    Plain relative paths are joined to the base as strings; the rest (absolute, URLs, '..') go
    through `_locate` one by one. Local targets are resolved through symlinks with a per-directory
    cache, so a million files cost about one lstat each, not one per path component.
    """
    import polars as pl

    plain = ~paths.str.contains(_NEEDS_NORMALISING)
    target = (base.path.rstrip("/") + "/" + paths).alias("target")
    relative = paths.clone().alias("relative")
    protocols = (
        pl.select(pl.repeat(protocol or "", len(paths), dtype=pl.String)).to_series().alias("protocol")
    )
    odd = plain.not_().arg_true()
    if odd.len():
        found = [_locate(raw, base, protocol) for raw in paths.gather(odd)]
        target.scatter(odd, [loc.path for loc, _ in found])
        relative.scatter(odd, [derive_video_id(rel) for _, rel in found])
        protocols.scatter(odd, [loc.protocol or "" for loc, _ in found])
    out = pl.DataFrame([target, relative, protocols])
    realpaths = _RealPaths()
    resolved = [
        realpaths(t) if p == "" else posixpath.normpath(t)
        for t, p in zip(out["target"], out["protocol"], strict=True)
    ]
    return out.with_columns(
        pl.when(pl.col("protocol") == "")
        .then(pl.col("target"))
        .otherwise(pl.format("{}://{}", "protocol", pl.col("target").str.strip_chars_start("/")))
        .alias("url"),
        pl.Series("resolved", resolved, dtype=pl.String),
    ).drop("target")


def _read_manifest_bytes(fs: Any, path: str, uri: str) -> bytes:
    """The manifest's bytes, or a ManifestError that says what the path is instead of a manifest."""
    write_one = "(`faceshard manifest FORMAT ROOT -o m.csv` or `faceshard synth` writes one)"
    if fs.isdir(path):
        raise ManifestError(
            f"manifest {uri} is a folder: pass the CSV or Parquet file that lists its videos {write_one}"
        )
    try:
        data = read_bytes(fs, path)
    except FileNotFoundError:
        raise ManifestError(f"manifest {uri} does not exist: check the path {write_one}") from None
    if not data.strip():
        raise ManifestError(f"manifest {uri} is empty: it needs a header path,label and one row per video")
    return data


def _read_frame(data: bytes, uri: str) -> pl.DataFrame:
    import polars as pl  # only manifest intake needs it: the per-video pipeline (GPU check) runs without

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


class _RealPaths:
    """`os.path.realpath` for many paths: each directory is resolved once and remembered.

    One lstat per path component not seen before (about one per file in a corpus), none below
    a component that does not exist.
    """

    def __init__(self) -> None:
        self._dirs: dict[str, tuple[str, bool]] = {}  # path → (resolved, exists)

    def __call__(self, path: str) -> str:
        return self._resolve(path)[0]

    def _resolve(self, path: str) -> tuple[str, bool]:
        parent, _, name = path.rpartition("/")  # absolute and normalised: plain string ops suffice
        if not name:
            return path, True
        found = self._dirs.get(parent)
        if found is None:
            found = self._dirs[parent] = self._resolve(parent) if parent else ("", True)
        real_parent, parent_exists = found
        candidate = f"{real_parent.rstrip('/')}/{name}"
        if not parent_exists:
            return candidate, False
        try:
            mode = os.lstat(candidate).st_mode
        except OSError:
            return candidate, False
        return (os.path.realpath(candidate), True) if stat.S_ISLNK(mode) else (candidate, True)


def _inside_any(roots: Sequence[_Location]) -> pl.Expr:
    """Row lies under one of `roots` (same protocol, resolved path equal or below)."""
    import polars as pl

    inside = pl.lit(False)
    for root in roots:
        resolved = root.resolved()
        below = pl.col("resolved").str.starts_with(resolved.rstrip("/") + "/")
        inside = inside | (
            (pl.col("protocol") == (root.protocol or "")) & ((pl.col("resolved") == resolved) | below)
        )
    return inside
