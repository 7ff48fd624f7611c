"""`faceshard bench loader`: the training loader's rows/s against a plain pyarrow scan, in one run.

N synthetic face rows (384-d float16 embeddings, FACES_PER_VIDEO faces of two identities per
video, VIDEOS_PER_SHARD videos per shard) are committed through the real shard writer
(`Output.commit_shard`; a later run with the same --out and --rows reuses them). Then, with the page
cache warmed by one untimed scan, best of two runs each:
  * raw: `pyarrow.dataset` scan of the same committed faces files (the loader's columns), to an Arrow
    table, no sample building;
  * loader: `ShardDataset(kind="mintime")` (pooled embeddings) through a `DataLoader` with `workers`
    worker processes: shard shuffle, per-video MINTIME samples, shuffle buffer, collation into batches.
`ratio` = loader rows/s ÷ raw rows/s (a face row counts once its video's sample reached the batch).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
from torch.utils.data import DataLoader

from faceshard.records import VideoTask
from faceshard.storage import fsio
from faceshard.storage.commit import METADATA_FILE, Output, locate, read_state
from faceshard.storage.datasets import ShardDataset
from faceshard.storage.manifest import plan_shards
from faceshard.storage.schema import table_schemas

DIM = 384
FACES_PER_VIDEO = 100
VIDEOS_PER_SHARD = 64
COLUMNS = ["video_id", "frame", "face", "identity", "size_bucket", "emb_rgb"]


def write_synthetic(out: Path, rows: int, seed: int = 0) -> dict[str, Any]:
    """Commit `rows` synthetic face rows (rounded up to whole videos) under `out`; return counts.

    An output this benchmark already wrote with the same row count is reused (write_s is then None).
    """
    n_videos = math.ceil(rows / FACES_PER_VIDEO)
    config = {"bench": "loader", "dim": DIM, "videos": n_videos, "faces_per_video": FACES_PER_VIDEO}
    if (out / METADATA_FILE).exists():
        fs, root = fsio.open_fs(str(out))
        state = read_state(fs, root)
        if state.metadata.get("row_affecting") != config or (state.plan or {}).get("shards_total") != len(
            state.markers
        ):
            raise ValueError(f"{out} holds another output (or an unfinished one); choose a new --out")
        return {
            "videos": n_videos,
            "rows": n_videos * FACES_PER_VIDEO,
            "shards": len(state.markers),
            "write_s": None,
        }
    videos = [
        VideoTask(
            video_id=f"b{i:07d}",
            path=f"/bench/b{i:07d}.mp4",
            label=i % 2,
            method="bench" if i % 2 else None,
            split="train",
        )
        for i in range(n_videos)
    ]
    output = Output.open(str(out), config=config, weights={})
    plans = plan_shards(videos, VIDEOS_PER_SHARD)
    output.set_plan(plans)
    schemas = table_schemas(emb_rgb_dim=DIM)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for plan in plans:
        output.commit_shard(plan, _shard_tables(plan.videos, schemas, rng), {})
    return {
        "videos": n_videos,
        "rows": n_videos * FACES_PER_VIDEO,
        "shards": len(plans),
        "write_s": time.perf_counter() - started,
    }


def _shard_tables(
    videos: list[VideoTask], schemas: dict[str, pa.Schema], rng: np.random.Generator
) -> dict[str, pa.Table]:
    """Columnar rows of one shard (row dicts would time Python, not storage)."""
    n, per = len(videos) * FACES_PER_VIDEO, FACES_PER_VIDEO
    ids = [v.video_id for v in videos]
    frame = np.tile(np.arange(per, dtype=np.int32) // 2, len(videos))
    identity = np.tile(np.arange(per, dtype=np.int32) % 2, len(videos))
    faces = {
        "video_id": np.repeat(ids, per),
        "frame": frame,
        "face": identity.astype(np.int16),
        "identity": identity,
        "score": rng.random(n, dtype=np.float32),
        "area_ratio": np.full(n, 4, np.int16),
        "size_bucket": rng.integers(1, 21, n).astype(np.int8),
        "emb_rgb": pa.FixedSizeListArray.from_arrays(
            pa.array(rng.standard_normal(n * DIM).astype(np.float16)), DIM
        ),
    }
    video_cols = {
        "video_id": ids,
        "path": [v.path for v in videos],
        "label": [v.label for v in videos],
        "method": [v.method for v in videos],
        "status": ["ok"] * len(videos),
        "n_faces": [per] * len(videos),
        "n_identities": [2] * len(videos),
    }
    identities = {
        "video_id": np.repeat(ids, 2),
        "identity": np.tile([0, 1], len(videos)),
        "rank": np.tile([0, 1], len(videos)),
        "n_faces": np.full(2 * len(videos), per // 2),
    }
    return {
        "videos": _table(video_cols, schemas["videos"]),
        "faces": _table(faces, schemas["faces"]),
        "identities": _table(identities, schemas["identities"]),
    }


def _table(columns: dict[str, Any], schema: pa.Schema) -> pa.Table:
    n = len(next(iter(columns.values())))
    arrays = []
    for field in schema:
        value = columns.get(field.name)
        if value is None:
            arrays.append(pa.nulls(n, field.type))
        elif isinstance(value, pa.Array):
            arrays.append(value.cast(field.type))
        else:
            arrays.append(pa.array(value, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def raw_scan(uri: str) -> tuple[int, float]:
    """(rows, seconds) of a plain pyarrow dataset scan of the committed faces files."""
    fs, root = fsio.open_fs(uri)
    paths = [locate(fs, root, entry) for entry in read_state(fs, root).files("faces")]
    started = time.perf_counter()
    table = pads.dataset(paths, format="parquet").to_table(columns=COLUMNS)
    return table.num_rows, time.perf_counter() - started


def loader_scan(uri: str, workers: int, batch_size: int) -> tuple[int, float]:
    """(face rows, seconds) streamed through ShardDataset + DataLoader (worker start-up included)."""
    dataset = ShardDataset(uri, "train", kind="mintime", feature="emb_rgb", shuffle_buffer=256)
    dataset.set_epoch(0)
    started = time.perf_counter()
    videos = 0
    for batch in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
        videos += len(batch["video_id"])
    return videos * FACES_PER_VIDEO, time.perf_counter() - started


def bench_loader(rows: int, out: Path, workers: int = 2, batch_size: int = 64) -> dict[str, Any]:
    """Write, warm, then time the raw scan and the loader; see the module doc."""
    written = write_synthetic(Path(out), rows)
    uri = str(out)
    raw_scan(uri)  # warm the page cache for both
    # Best of two runs each: on a shared machine one slow run says little about either.
    loader_rows, loader_s = min((loader_scan(uri, workers, batch_size) for _ in range(2)), key=lambda r: r[1])
    raw_rows, raw_s = min((raw_scan(uri) for _ in range(2)), key=lambda r: r[1])
    if loader_rows != raw_rows:
        raise ValueError(f"the loader streamed {loader_rows} rows, the files hold {raw_rows}")
    return {
        **written,
        "workers": workers,
        "batch_size": batch_size,
        "loader_s": round(loader_s, 3),
        "raw_s": round(raw_s, 3),
        "rows_per_s": round(loader_rows / loader_s),
        "raw_rows_per_s": round(raw_rows / raw_s),
        "ratio": round((loader_rows / loader_s) / (raw_rows / raw_s), 3),
    }
