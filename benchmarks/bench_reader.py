"""load_faces throughput against plain `pyarrow.parquet.read_table` of the same committed files.

Writes ~200k faces × 384 float16 embeddings as a real build would (16 videos per shard, ~200
faces per video, one commit per shard), then times, best of `--repeat` warm runs:
  * read_table: `pq.read_table(files, columns=...)` of the committed faces files (Arrow only);
  * read_table+numpy: the same, plus the (N, 384) embedding matrix as numpy;
  * load_faces: markers → dataset scan → numpy arrays + labels joined from the videos table.
Prints MB/s of embedding payload and the ratio load_faces / read_table.

    .venv/bin/python benchmarks/bench_reader.py [--faces 200000] [--out /tmp/bench-out]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from faceshard.storage.commit import Output
from faceshard.storage.manifest import plan_shards
from faceshard.storage.reader import fixed_list_to_numpy, load_faces
from faceshard.storage.schema import table_schemas
from faceshard.storage.testing import fake_videos

DIM = 384
VIDEOS_PER_SHARD = 16


def shard_tables(plan, faces_per_video: int, schemas: dict[str, pa.Schema], rng) -> dict[str, pa.Table]:
    """Columnar fake rows of one shard (building 200k row dicts would time Python, not storage)."""
    videos = plan.videos
    n = len(videos) * faces_per_video
    video_ids = np.repeat([v.video_id for v in videos], faces_per_video)
    emb = rng.standard_normal((n, DIM)).astype(np.float16)
    faces = {
        "video_id": pa.array(video_ids),
        "frame": pa.array(np.tile(np.arange(faces_per_video, dtype=np.int32), len(videos))),
        "face": pa.array(np.zeros(n, np.int16)),
        "identity": pa.array(np.zeros(n, np.int32)),
        "x1": pa.array(np.full(n, 10, np.float32)),
        "y1": pa.array(np.full(n, 10, np.float32)),
        "x2": pa.array(np.full(n, 90, np.float32)),
        "y2": pa.array(np.full(n, 110, np.float32)),
        "score": pa.array(rng.random(n, dtype=np.float32)),
        "area_ratio": pa.array(np.full(n, 4, np.int16)),
        "size_bucket": pa.array(np.ones(n, np.int8)),
        "emb_rgb": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), DIM),
    }
    split = [v.split for v in videos]
    video_table = {
        "video_id": [v.video_id for v in videos],
        "path": [v.path for v in videos],
        "label": [v.label for v in videos],
        "method": [v.method for v in videos],
        "status": ["ok"] * len(videos),
        "n_faces": [faces_per_video] * len(videos),
        "split": split,
        "shard": [plan.shard_id] * len(videos),
    }
    identities = {
        "video_id": [v.video_id for v in videos],
        "identity": [0] * len(videos),
        "n_faces": [faces_per_video] * len(videos),
    }
    return {
        "videos": _table(video_table, schemas["videos"]),
        "faces": _table(faces, schemas["faces"]),
        "identities": _table(identities, schemas["identities"]),
    }


def _table(columns: dict, schema: pa.Schema) -> pa.Table:
    n = len(next(iter(columns.values())))
    arrays = [pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--faces", type=int, default=200_000)
    parser.add_argument("--faces-per-video", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: a temp dir)")
    args = parser.parse_args()

    workdir = args.out or Path(tempfile.mkdtemp(prefix="faceshard-bench-"))
    uri = str(workdir / "dataset")
    n_videos = max(1, args.faces // args.faces_per_video)
    plans = plan_shards(fake_videos(n_videos, splits=("train", "train", "train", "val")), VIDEOS_PER_SHARD)
    schemas = table_schemas(emb_rgb_dim=DIM)
    out = Output.open(uri, config={"bench": DIM}, weights={}, rebuild=True)
    out.set_plan(plans)
    rng = np.random.default_rng(0)
    tables = [shard_tables(plan, args.faces_per_video, schemas, rng) for plan in plans]
    started = time.perf_counter()
    for plan, shard in zip(plans, tables, strict=True):
        out.commit_shard(plan, shard, {})
    write_s = time.perf_counter() - started
    n_faces = sum(t["faces"].num_rows for t in tables)
    del tables

    state = out.state()
    files = [f"{out.root}/{entry['path']}" for entry in state.files("faces")]
    columns = ["video_id", "frame", "face", "identity", "size_bucket", "emb_rgb"]
    payload_mb = n_faces * DIM * 2 / 1e6
    on_disk_mb = sum(entry["bytes"] for entry in state.files("faces")) / 1e6

    def plain():
        return pq.read_table(files, columns=columns)

    def plain_numpy():
        table = pq.read_table(files, columns=columns)
        return fixed_list_to_numpy(table["emb_rgb"]), table["video_id"].to_numpy()

    def ours():
        return load_faces(uri, columns=("emb_rgb",))

    load_faces(uri)  # warm the page cache once
    t_plain, table = best_of(args.repeat, plain)
    t_plain_np, _ = best_of(args.repeat, plain_numpy)
    t_ours, faces = best_of(args.repeat, ours)
    assert table.num_rows == len(faces) == n_faces and faces.emb_rgb.shape == (n_faces, DIM)
    assert faces.label.shape == (n_faces,)

    print(
        f"{n_faces} faces × {DIM} float16 in {len(plans)} shards / {len(files)} faces files"
        f" ({payload_mb:.0f} MB embeddings, {on_disk_mb:.0f} MB on disk);"
        f" commit {n_faces / write_s:,.0f} faces/s"
    )
    for name, seconds in (("read_table", t_plain), ("read_table+numpy", t_plain_np), ("load_faces", t_ours)):
        print(
            f"  {name:18s} {seconds * 1000:8.1f} ms  {payload_mb / seconds:8.0f} MB/s"
            f"  {n_faces / seconds:12,.0f} faces/s"
        )
    print(f"ratio load_faces / read_table       = {t_ours / t_plain:.2f}")
    print(f"ratio load_faces / read_table+numpy = {t_ours / t_plain_np:.2f}")
    if args.out is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
