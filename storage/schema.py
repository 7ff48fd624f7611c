"""Versioned Arrow schemas of the three output tables (SPEC §10) and row dicts → Arrow tables.

`split` and `shard` are hive partition columns: the logical schemas below end with them (as
`pyarrow.dataset.dataset(..., partitioning="hive")` returns them), but the Parquet files do not
store them; they live in the path `table/split=<split>/shard=<shard>/part-<attempt>.parquet`.
Bump SCHEMA_VERSION whenever a column is added, removed or changes meaning: it is part of the
dataset fingerprint, so an old output is never silently extended with rows of a new layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from faceshard.records import VideoTask

SCHEMA_VERSION = 3  # 3: source-aware columns (videos.detections*, identities.source_identity, manip_*)
TABLES = ("videos", "faces", "identities")
# Side tables: committed with a shard's rows (same commit point) for faceshard's own later builds, never
# part of the dataset's rows; a commit of an older faceshard has none. `detections`: what each source
# video of a source-aware build leaves for fakes added by a later build (tasks/source_store.py).
SIDE_TABLES = ("detections",)
PARTITION_COLUMNS = ("split", "shard")
PARTITION_SCHEMA = pa.schema([("split", pa.string()), ("shard", pa.int32())])
VIDEO_STATUSES = ("ok", "no_faces", "error")
EMB_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
SCHEMA_VERSION_KEY = b"faceshard.schema_version"
TABLE_KEY = b"faceshard.table"

_VIDEO_FIELDS = [
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("label", pa.int8(), nullable=False),
    pa.field("method", pa.string()),
    pa.field("source", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("fps", pa.float64()),
    pa.field("n_frames", pa.int32()),
    pa.field("n_frames_container", pa.int32()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("n_faces", pa.int32()),
    pa.field("n_identities", pa.int32()),
    pa.field("seconds", pa.float32()),
    # Where the boxes came from: `detector` (its own detection) or `source` (its source's, verified);
    # `detections_note` says why a fake with a source in its shard was detected on its own.
    pa.field("detections", pa.string()),
    pa.field("detections_note", pa.string()),
]
_FACE_FIELDS = [
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("frame", pa.int32(), nullable=False),
    pa.field("face", pa.int16(), nullable=False),
    pa.field("identity", pa.int32(), nullable=False),
    pa.field("x1", pa.float32()),
    pa.field("y1", pa.float32()),
    pa.field("x2", pa.float32()),
    pa.field("y2", pa.float32()),
    pa.field("score", pa.float32()),
    pa.field("area_ratio", pa.int16()),
    pa.field("size_bucket", pa.int8()),
]
_IDENTITY_FIELDS = [
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("identity", pa.int32(), nullable=False),
    pa.field("rank", pa.int32()),
    pa.field("n_faces", pa.int32()),
    pa.field("mean_side", pa.float32()),
    pa.field("first_frame", pa.int32()),
    pa.field("last_frame", pa.int32()),
    # Fakes whose source was processed with them (tasks/sources.py): the source's identity these faces
    # sit on, how far their crops are from the source's (thumbnail pixels 0-1, identity embedding), and
    # whether that makes this identity `manipulated`. Null for sources and fakes detected on their own.
    pa.field("source_identity", pa.int32()),
    pa.field("manip_pixel", pa.float32()),
    pa.field("manip_embed", pa.float32()),
    pa.field("manipulated", pa.bool_()),
]

_DETECTION_FIELDS = [
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("frame", pa.int32(), nullable=False),
    # A frame row (`face` null): the detector's answer on a frame it was asked about, face-less ones
    # too; `seq` is its place in the order the frames were detected (sampling fallback tries included).
    pa.field("seq", pa.int32()),
    pa.field("boxes", pa.list_(pa.list_(pa.float32(), 4))),
    pa.field("scores", pa.list_(pa.float32())),
    # A face row: one kept face (frame, rank), its identity, its 32 x 32 RGB uint8 thumbnail and its
    # identity embedding (null where the build computed none).
    pa.field("face", pa.int16()),
    pa.field("identity", pa.int32()),
    pa.field("thumb", pa.binary()),
    pa.field("id_embedding", pa.list_(pa.float32())),
]


def video_row(video: VideoTask, shard_id: int, **measured: Any) -> dict[str, Any]:
    """A `videos` row: the manifest's fields of `video`, its shard, and `measured` over the defaults of
    a video nothing was learned about (status `error`, no frames, no faces)."""
    row: dict[str, Any] = {
        "video_id": video.video_id,
        "path": video.path,
        "label": video.label,
        "method": video.method,
        "split": video.split,
        "source": video.source,
        "dataset": video.dataset,
        "status": "error",
        "error": None,
        "fps": None,
        "n_frames": None,
        "n_frames_container": None,
        "width": None,
        "height": None,
        "n_faces": 0,
        "n_identities": 0,
        "shard": shard_id,
        "seconds": 0.0,
        "detections": None,
        "detections_note": None,
    }
    unknown = set(measured) - set(row)
    if unknown:
        raise ValueError(f"not columns of the videos table: {sorted(unknown)}")
    row.update(measured)
    return row


def table_schemas(
    emb_rgb_dim: int | None = None,
    emb_depth_dim: int | None = None,
    tokens_shape: tuple[int, int] | None = None,
    emb_dtype: str = "float16",
    with_crop: bool = False,
    with_depth: bool = False,
) -> dict[str, pa.Schema]:
    """The logical schemas of `videos`, `faces`, `identities` (partition columns last).

    Optional face columns exist only when enabled (SPEC §10): `emb_rgb`/`emb_depth` as
    fixed_size_list<emb_dtype>[dim], `tokens` as fixed_size_list<fixed_size_list<emb_dtype>[C]>[T]
    for `tokens_shape=(T, C)` (e.g. 49 × C), `crop`/`depth` as encoded image bytes.
    """
    if emb_dtype not in EMB_DTYPES:
        raise ValueError(f"emb_dtype must be one of {', '.join(EMB_DTYPES)}, got {emb_dtype!r}")
    value_type = EMB_DTYPES[emb_dtype]
    faces = list(_FACE_FIELDS)
    if emb_rgb_dim:
        faces.append(pa.field("emb_rgb", pa.list_(value_type, int(emb_rgb_dim))))
    if emb_depth_dim:
        faces.append(pa.field("emb_depth", pa.list_(value_type, int(emb_depth_dim))))
    if tokens_shape:
        n_tokens, channels = (int(x) for x in tokens_shape)
        faces.append(pa.field("tokens", pa.list_(pa.list_(value_type, channels), n_tokens)))
    if with_crop:
        faces.append(pa.field("crop", pa.binary()))
    if with_depth:
        faces.append(pa.field("depth", pa.binary()))
    fields = {"videos": _VIDEO_FIELDS, "faces": faces, "identities": _IDENTITY_FIELDS}
    return {
        name: pa.schema(
            [*cols, *PARTITION_SCHEMA],
            metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode(), TABLE_KEY: name.encode()},
        )
        for name, cols in fields.items()
    }


def side_table_schemas() -> dict[str, pa.Schema]:
    """The logical schemas of the side tables (partition columns last, as the row tables')."""
    return {
        "detections": pa.schema(
            [*_DETECTION_FIELDS, *PARTITION_SCHEMA],
            metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode(), TABLE_KEY: b"detections"},
        )
    }


def side_table(name: str, rows: Sequence[dict[str, Any]]) -> pa.Table:
    """A side table of one shard from row dicts (the commit files `split`/`shard` from the plan)."""
    return _rows_to_table(rows, side_table_schemas()[name], {}, name)


def file_schema(schema: pa.Schema) -> pa.Schema:
    """What a Parquet file stores: the logical schema without the hive partition columns."""
    for name in PARTITION_COLUMNS:
        if name in schema.names:
            schema = schema.remove(schema.get_field_index(name))
    return schema


def schema_version_of(schema: pa.Schema) -> int | None:
    """The SCHEMA_VERSION a table or file was written with (None for foreign data)."""
    raw = (schema.metadata or {}).get(SCHEMA_VERSION_KEY)
    return int(raw) if raw is not None else None


def rows_to_tables(
    video_rows: Sequence[dict[str, Any]],
    face_rows: Sequence[dict[str, Any]],
    identity_rows: Sequence[dict[str, Any]],
    schemas: dict[str, pa.Schema],
) -> dict[str, pa.Table]:
    """Build the three tables of one shard from row dicts (keys as in the schemas).

    Face rows carry numpy arrays for embeddings (None where the stage produced nothing) and bytes
    for crop/depth. Faces and identities without `split`/`shard` take their video's; the commit
    checks `split` against the plan and files both partition columns under the path.
    """
    by_video = {row["video_id"]: row for row in video_rows}
    for row in video_rows:
        if row.get("status") not in VIDEO_STATUSES:
            raise ValueError(f"video {row['video_id']}: status {row.get('status')!r} not in {VIDEO_STATUSES}")
    rows = {"videos": video_rows, "faces": face_rows, "identities": identity_rows}
    return {name: _rows_to_table(rows[name], schemas[name], by_video, name) for name in TABLES}


def _rows_to_table(
    rows: Sequence[dict[str, Any]], schema: pa.Schema, by_video: dict[str, dict[str, Any]], table: str
) -> pa.Table:
    columns = []
    for field in schema:
        if field.name in PARTITION_COLUMNS:
            values = [_partition_value(row, field.name, by_video) for row in rows]
            columns.append(pa.array(values, type=field.type))
        elif pa.types.is_fixed_size_list(field.type):
            columns.append(_fixed_size_column([row.get(field.name) for row in rows], field))
        else:
            try:
                columns.append(pa.array([row.get(field.name) for row in rows], type=field.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
                raise ValueError(f"{table}.{field.name}: {exc}") from None
    return pa.Table.from_arrays(columns, schema=schema)


def _partition_value(row: dict[str, Any], name: str, by_video: dict[str, dict[str, Any]]) -> Any:
    """The row's own split/shard, else its video's; None is fine: the commit takes both from the plan."""
    value = row.get(name)
    if value is None and row.get("video_id") in by_video:
        value = by_video[row["video_id"]].get(name)
    return value


def _fixed_size_column(values: list[np.ndarray | None], field: pa.Field) -> pa.Array:
    """Stack per-row arrays into one contiguous buffer: a FixedSizeListArray with no per-row copies."""
    shape, leaf = fixed_shape(field.type)
    dtype = leaf.to_pandas_dtype()
    mask = np.array([v is None for v in values], dtype=bool)
    flat = np.zeros((len(values), *shape), dtype=dtype)
    for i, value in enumerate(values):
        if value is None:
            continue
        array = np.asarray(value)
        if array.shape != shape:
            raise ValueError(f"faces.{field.name}: expected shape {shape}, got {array.shape}")
        flat[i] = array
    arrow: pa.Array = pa.array(flat.reshape(-1), type=leaf)
    for size in reversed(shape[1:]):
        arrow = pa.FixedSizeListArray.from_arrays(arrow, size)
    return pa.FixedSizeListArray.from_arrays(
        arrow, type=field.type, mask=pa.array(mask) if mask.any() else None
    )


def fixed_shape(type_: pa.DataType) -> tuple[tuple[int, ...], pa.DataType]:
    """(shape, leaf type) of a (nested) fixed_size_list type: list<list<f16>[C]>[49] → ((49, C), f16)."""
    shape = []
    while pa.types.is_fixed_size_list(type_):
        shape.append(type_.list_size)
        type_ = type_.value_type
    return tuple(shape), type_
