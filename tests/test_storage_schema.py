"""Arrow schemas (SPEC §10): types of the embedding columns, row conversion, Parquet round trip."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from faceshard.records import VideoTask
from faceshard.storage.commit import Output
from faceshard.storage.manifest import ShardPlan
from faceshard.storage.reader import fixed_list_to_numpy
from faceshard.storage.schema import (
    SCHEMA_VERSION,
    file_schema,
    rows_to_tables,
    schema_version_of,
    table_schemas,
)

SPEC_COLUMNS = {
    "videos": [
        "video_id",
        "path",
        "label",
        "method",
        "split",
        "source",
        "dataset",
        "status",
        "error",
        "fps",
        "n_frames",
        "width",
        "height",
        "n_faces",
        "n_identities",
        "shard",
    ],
    "faces": [
        "video_id",
        "frame",
        "face",
        "identity",
        "x1",
        "y1",
        "x2",
        "y2",
        "score",
        "area_ratio",
        "size_bucket",
    ],
    "identities": ["video_id", "identity", "rank", "n_faces", "mean_side", "first_frame", "last_frame"],
}


def test_optional_face_columns_have_fixed_size_types() -> None:
    schemas = table_schemas(
        emb_rgb_dim=384, emb_depth_dim=384, tokens_shape=(49, 320), with_crop=True, with_depth=True
    )
    faces = schemas["faces"]
    assert faces.field("emb_rgb").type == pa.list_(pa.float16(), 384)
    assert faces.field("emb_depth").type == pa.list_(pa.float16(), 384)
    assert faces.field("tokens").type == pa.list_(pa.list_(pa.float16(), 320), 49)
    assert faces.field("crop").type == pa.binary()
    assert faces.field("depth").type == pa.binary()
    assert table_schemas(emb_rgb_dim=1280, emb_dtype="float32")["faces"].field("emb_rgb").type == pa.list_(
        pa.float32(), 1280
    )
    plain = table_schemas()["faces"].names
    assert not {"emb_rgb", "emb_depth", "tokens", "crop", "depth"} & set(plain)
    for name, columns in SPEC_COLUMNS.items():
        assert set(columns) <= set(schemas[name].names), name
        assert schemas[name].names[-2:] == ["split", "shard"]
        assert schema_version_of(schemas[name]) == SCHEMA_VERSION
        assert "split" not in file_schema(schemas[name]).names


def test_rejects_bad_dtype_shape_and_status() -> None:
    with pytest.raises(ValueError, match="emb_dtype"):
        table_schemas(emb_rgb_dim=8, emb_dtype="bfloat16")
    schemas = table_schemas(emb_rgb_dim=4)
    video = {"video_id": "a", "path": "/a.mp4", "label": 0, "split": "all", "status": "ok", "shard": 0}
    face = {"video_id": "a", "frame": 0, "face": 0, "identity": 0, "emb_rgb": np.zeros(5, np.float16)}
    with pytest.raises(ValueError, match=r"emb_rgb: expected shape \(4,\)"):
        rows_to_tables([video], [face], [], schemas)
    with pytest.raises(ValueError, match="status"):
        rows_to_tables([{**video, "status": "fine"}], [], [], schemas)


def _rows(tokens: np.ndarray, emb: np.ndarray) -> tuple[list[dict], list[dict], list[dict]]:
    videos = [
        {"video_id": "a", "path": "/d/a.mp4", "label": 1, "method": "df", "split": "train", "status": "ok"}
        | {"error": None, "fps": 29.97, "n_frames": 10, "n_frames_container": 12, "width": 64, "height": 48}
        | {"n_faces": 2, "n_identities": 1, "shard": 0, "seconds": 1.25},
        {"video_id": "b", "path": "/d/b.mp4", "label": 0, "method": None, "split": "train", "status": "error"}
        | {"error": "cannot decode", "n_faces": 0, "n_identities": 0, "shard": 0, "seconds": 0.1},
    ]
    faces = [
        {"video_id": "a", "split": "train", "frame": i * 5, "face": 0, "identity": 0, "x1": -3.5, "y1": 2.0}
        | {"x2": 40.0, "y2": 44.0, "score": 0.97, "area_ratio": 31, "size_bucket": 7}
        | {"emb_rgb": emb[i], "tokens": tokens[i], "crop": b"\x89PNG" + bytes([i]), "depth": None}
        for i in range(2)
    ]
    identities = [
        {"video_id": "a", "split": "train", "identity": 0, "rank": 0, "n_faces": 2, "mean_side": 43.5}
        | {"first_frame": 0, "last_frame": 5}
    ]
    return videos, faces, identities


def test_round_trip_through_a_committed_shard(tmp_path) -> None:
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((2, 49, 6)).astype(np.float32)
    emb = rng.standard_normal((2, 16)).astype(np.float32)
    schemas = table_schemas(
        emb_rgb_dim=16, tokens_shape=(49, 6), emb_dtype="float32", with_crop=True, with_depth=True
    )
    tables = rows_to_tables(*_rows(tokens, emb), schemas)
    assert tables["faces"].schema == schemas["faces"]
    plan = ShardPlan(
        0,
        [
            VideoTask("a", "/d/a.mp4", 1, "df", "train"),
            VideoTask("b", "/d/b.mp4", 0, None, "train"),
        ],
    )
    out = Output.open(str(tmp_path / "out"), config={"x": 1}, weights={})
    out.set_plan([plan])
    out.commit_shard(plan, tables, {})

    for name, table in tables.items():
        read = ds.dataset(str(tmp_path / "out" / name), format="parquet", partitioning="hive").to_table()
        assert read.schema.names == table.schema.names
        for field in table.schema:
            assert read.schema.field(field.name).type == field.type, field.name
        assert read.to_pylist() == table.to_pylist(), name
    faces = ds.dataset(str(tmp_path / "out" / "faces"), format="parquet", partitioning="hive").to_table()
    np.testing.assert_array_equal(fixed_list_to_numpy(faces["tokens"]), tokens)
    np.testing.assert_array_equal(fixed_list_to_numpy(faces["emb_rgb"]), emb)
    assert faces["crop"].to_pylist() == [b"\x89PNG\x00", b"\x89PNG\x01"]
    assert faces["depth"].to_pylist() == [None, None]


def test_fixed_list_to_numpy_handles_slices_chunks_and_nulls() -> None:
    values = np.arange(24, dtype=np.float16).reshape(6, 4)
    array = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 4)
    sliced = array.slice(2, 3)
    np.testing.assert_array_equal(fixed_list_to_numpy(sliced), values[2:5])
    chunked = pa.chunked_array([array.slice(0, 2), array.slice(3, 3)])
    np.testing.assert_array_equal(fixed_list_to_numpy(chunked), values[[0, 1, 3, 4, 5]])
    assert fixed_list_to_numpy(chunked, "float32").dtype == np.float32
    with_null = pa.FixedSizeListArray.from_arrays(
        pa.array(values.reshape(-1)), 4, mask=pa.array([False, True, False, False, False, False])
    )
    out = fixed_list_to_numpy(with_null)
    assert np.isnan(out[1]).all() and (out[2] == values[2]).all()
