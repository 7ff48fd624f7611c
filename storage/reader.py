"""The training reader: committed rows only, found through the commit markers, never by listing.

The markers name exactly the files of committed shards (also while one is still being moved into
place); they are scanned with one `pyarrow.dataset` (parallel over files), the `split`/`shard`
columns are filled in from the markers, and fixed_size_list columns become numpy arrays without
per-row work (the `values` buffer reshaped).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from fsspec import AbstractFileSystem

from faceshard.errors import StorageError
from faceshard.storage import fsio
from faceshard.storage.commit import OutputState, locate, read_state
from faceshard.storage.schema import PARTITION_COLUMNS, TABLES, fixed_shape, table_schemas

FACE_KEYS = ("video_id", "frame", "face", "identity", "size_bucket")
EMBEDDINGS = ("emb_rgb", "emb_depth", "tokens")
# The build settings that add a faces column (said in the error when it is missing).
HOW_TO_ADD = {
    "tokens": ("embed.enabled=true", "embed.output=tokens"),
    "emb_rgb": ("embed.enabled=true", "embed.output=pooled"),
    "emb_depth": ("depth.enabled=true", "embed.depth=true", "embed.output=pooled"),
    "crop": ("crop.save=true",),
    "depth": ("depth.enabled=true", "depth.save=true"),
}


def how_to_add(columns: Sequence[str]) -> str:
    """The `--set` flags that add `columns` to a build, each once, and the `--rebuild` they need
    (the settings change the output's fingerprint): what a missing-column error tells the user."""
    settings = dict.fromkeys(s for c in columns for s in HOW_TO_ADD.get(c, ()))
    if not settings:
        return "this faceshard version does not write it"
    flags = " ".join(f"--set {s}" for s in settings)
    return f"build again with {flags} --rebuild (or into a new --out)"


class MissingColumnsError(KeyError, ValueError):
    """The committed rows lack a column that was asked for; the message names the build setting."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


READ_ATTEMPTS = 3
T = TypeVar("T")


@dataclass
class FaceArrays:
    """Per-face arrays of the committed `faces` rows, aligned by position (N faces).

    Embedding arrays keep the stored dtype (float16 by default) unless asked otherwise; they are
    None when not requested or not stored. Other requested columns land in `extra`.
    """

    video_id: np.ndarray  # (N,) object (str)
    label: np.ndarray  # (N,) int8, from the videos table: 0 real, 1 fake
    frame: np.ndarray  # (N,) int32
    face: np.ndarray  # (N,) int16, rank within the frame
    identity: np.ndarray  # (N,) int32, -1 = unassigned
    size_bucket: np.ndarray  # (N,) int8, 1…20
    emb_rgb: Any = None  # (N, D)
    emb_depth: Any = None  # (N, D)
    tokens: Any = None  # (N, T, C)
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.video_id)


def load_faces(
    uri: str,
    split: str | Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    as_torch: bool = False,
    emb_dtype: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> FaceArrays:
    """Load committed faces (optionally of some splits) as numpy arrays (torch tensors if `as_torch`).

    `columns` adds face columns to the always-loaded keys (video_id, frame, face, identity,
    size_bucket); None adds whichever embeddings the build stored (`emb_rgb`, `emb_depth`, `tokens`:
    a MINTIME build has tokens only), and a named column the build lacks is a MissingColumnsError
    naming the setting that adds it. `emb_dtype` ("float32") converts embeddings, None keeps the
    stored dtype.
    """
    fs, root = fsio.open_fs(uri, storage_options)
    splits = _splits(split)
    wanted = list(dict.fromkeys([*FACE_KEYS, *(columns or ())]))
    optional = EMBEDDINGS if columns is None else ()

    def scan_both(state: OutputState) -> tuple[pa.Table, pa.Table]:
        faces = _scan(fs, root, state, "faces", splits, wanted, optional)
        return faces, _scan(fs, root, state, "videos", splits, ["video_id", "label"])

    faces, videos = _consistent(fs, root, scan_both)
    wanted = [*wanted, *(c for c in optional if c in faces.column_names)]
    positions = pc.index_in(faces["video_id"], value_set=videos["video_id"].combine_chunks())
    labels = videos["label"].combine_chunks().take(positions)

    arrays: dict[str, Any] = {"label": labels.to_numpy(zero_copy_only=False)}
    extra: dict[str, Any] = {}
    for name in wanted:
        if name not in faces.column_names:  # only when nothing is committed
            continue
        column = faces[name]
        if pa.types.is_fixed_size_list(column.type):
            value = fixed_list_to_numpy(column, emb_dtype)
        else:
            value = column.to_numpy()
        if name in FACE_KEYS or name in ("emb_rgb", "emb_depth", "tokens"):
            arrays[name] = value
        else:
            extra[name] = value
    if as_torch:
        arrays = {k: _to_torch(v) for k, v in arrays.items()}
        extra = {k: _to_torch(v) for k, v in extra.items()}
    return FaceArrays(**arrays, extra=extra)


def read_table(
    uri: str,
    table: str,
    split: str | Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> pa.Table:
    """The committed rows of one table (with `split` and `shard`), optionally some splits/columns."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; one of {', '.join(TABLES)}")
    fs, root = fsio.open_fs(uri, storage_options)
    wanted = list(columns) if columns else None
    return _consistent(fs, root, lambda state: _scan(fs, root, state, table, _splits(split), wanted))


def _consistent(fs: AbstractFileSystem, root: str, read: Callable[[OutputState], T]) -> T:
    """Run `read` on a fresh committed view; again if a build moved or replaced a file meanwhile."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return read(read_state(fs, root))
        except FileNotFoundError:
            if attempt == READ_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def fixed_list_to_numpy(column: pa.ChunkedArray | pa.Array, dtype: str | None = None) -> np.ndarray:
    """(N, *shape) numpy from a (nested) fixed_size_list column: zero-copy for one chunk, one copy else.

    Null rows (an embedding that was not produced) come back as NaN.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    shape, leaf = fixed_shape(column.type)
    leaf_dtype = np.dtype(leaf.to_pandas_dtype())
    views = [_leaf_view(chunk, shape, leaf_dtype) for chunk in chunks]
    if len(views) == 1:
        out = views[0]
    else:
        out = np.empty((len(column), *shape), dtype=leaf_dtype)
        offset = 0
        for view in views:
            out[offset : offset + len(view)] = view
            offset += len(view)
    if column.null_count:
        out = np.array(out, dtype=np.result_type(out.dtype, np.float16), copy=True)
        out[column.is_null().to_numpy(zero_copy_only=False)] = np.nan
    if dtype is not None and out.dtype != np.dtype(dtype):
        out = out.astype(dtype)
    return out


def _leaf_view(chunk: pa.Array, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    values: pa.Array = chunk
    for size in shape:
        # `.values` ignores the array's slice offset; `.flatten()` would drop null rows.
        values = values.values.slice(values.offset * size, len(values) * size)
    if values.null_count:
        values = values.fill_null(0)
    array = values.to_numpy(zero_copy_only=values.null_count == 0)
    return array.astype(dtype, copy=False).reshape(len(chunk), *shape)


def _splits(split: str | Sequence[str] | None) -> list[str] | None:
    if split is None:
        return None
    return [split] if isinstance(split, str) else list(split)


def _arrow_fs(fs: AbstractFileSystem) -> pafs.FileSystem | AbstractFileSystem:
    """pyarrow's native local filesystem is faster; other fsspec filesystems are wrapped by pyarrow."""
    return pafs.LocalFileSystem() if fsio.is_local(fs) else fs


def _scan(
    fs: AbstractFileSystem,
    root: str,
    state: OutputState,
    table: str,
    splits: list[str] | None,
    columns: list[str] | None,
    optional: Sequence[str] = (),
) -> pa.Table:
    """`columns` of the committed rows (all when None), plus those of `optional` that are stored."""
    entries = state.files(table, splits)
    if not entries:
        # Nothing committed yet: an empty table of the base schema (optional columns left out).
        empty = table_schemas()[table].empty_table()
        return empty.select([c for c in columns if c in empty.column_names]) if columns else empty
    dataset = ds.dataset(
        [locate(fs, root, entry) for entry in entries], format="parquet", filesystem=_arrow_fs(fs)
    )
    wanted = dataset.schema.names + list(PARTITION_COLUMNS) if columns is None else columns
    wanted = [*wanted, *(c for c in optional if c in dataset.schema.names and c not in wanted)]
    stored = [c for c in wanted if c not in PARTITION_COLUMNS]
    missing = [c for c in stored if c not in dataset.schema.names]
    if missing:
        raise MissingColumnsError(
            f"{table} has no column(s) {', '.join(missing)} (stored: {', '.join(dataset.schema.names)});"
            f" {how_to_add(missing)}"
        )
    result = dataset.to_table(columns=stored)
    rows = np.array([entry["rows"] for entry in entries], dtype=np.int64)
    if result.num_rows != rows.sum():
        raise StorageError(f"{table}: committed files hold {result.num_rows} rows, markers say {rows.sum()}")
    # Partition values come from the markers (files are read in marker order), not from paths.
    if "split" in wanted:
        splits = sorted({entry["split"] for entry in entries})
        codes = np.repeat([splits.index(entry["split"]) for entry in entries], rows).astype(np.int32)
        split = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(splits)).cast(pa.string())
        result = result.append_column("split", split)
    if "shard" in wanted:
        result = result.append_column(
            "shard", pa.array(np.repeat([entry["shard"] for entry in entries], rows).astype(np.int32))
        )
    return result.select(wanted)


def _to_torch(value: Any) -> Any:
    import torch

    if not isinstance(value, np.ndarray) or value.dtype == object:
        return value
    with warnings.catch_warnings():
        # Zero-copy views of Arrow buffers are flagged read-only; the tensor shares that memory.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(value)
