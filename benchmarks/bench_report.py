"""`faceshard report --html` on a ForgeryNet-sized output: wall time and peak memory.

Writes a simulated output of 221,247 videos (ForgeryNet's count) in shards of 256 through the real
commit path (`Output.commit_shard`, one marker per shard with per-stage stats), columnar so that
writing it times storage, not Python: ~12 faces a video (per-second sampling of ~10 s clips), 1–3
identities, a few unassigned faces, area ratios spread like small faces in big frames, a 384-wide
float16 embedding and a small JPEG crop per face, 1 % failed videos with a few reasons, fakes
linked to a `source`. Then, each in a fresh process (so peak RSS is its own):
  * imports only (the baseline every command pays);
  * `faceshard report --html` (faceshard.app.report_html.write_report);
  * the terminal report (faceshard.app.report.dataset_report) for comparison.
Prints seconds, peak RSS (VmHWM) and the output's size.

    .venv/bin/python benchmarks/bench_report.py [--videos 221247] [--out /tmp/bench-report]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from faceshard.records import VideoTask
from faceshard.storage.commit import Output
from faceshard.storage.manifest import plan_shards
from faceshard.storage.schema import table_schemas

FORGERYNET_VIDEOS = 221_247
SHARD_SIZE = 256
DIM = 384
METHODS = ["faceswap", "reenact", "attribute", "fomm", "deepfakes", "stargan", "talkinghead"]
REASONS = [
    "VideoError: cannot decode: moov atom not found",
    "VideoError: no video stream",
    "RuntimeError: CUDA out of memory",
]
STAGES = ("decode", "detect", "crop", "size", "identity", "embed", "encode", "cluster")

CHILD = """
import json, resource, sys, time
from pathlib import Path
def hwm():
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
what, uri, page = sys.argv[1:4]
import faceshard.app.report, faceshard.app.report_html
base = hwm()
started = time.perf_counter()
if what == 'html':
    faceshard.app.report_html.write_report(uri, page)
elif what == 'terminal':
    from rich.console import Console
    Console(file=open('/dev/null', 'w')).print(faceshard.app.report.dataset_report(uri))
print(json.dumps({'seconds': round(time.perf_counter() - started, 2), 'imports_mib': round(base),
                  'peak_mib': round(hwm())}))
"""


def videos(n: int) -> list[VideoTask]:
    """ForgeryNet-shaped: a third real, fakes by method, 1 in 10 in val; fakes name a real `source`."""
    out = []
    for i in range(n):
        fake = i % 3 != 0
        out.append(
            VideoTask(
                video_id=f"fn{i:07d}",
                path=f"/data/{'train' if i % 10 else 'val'}_release/{i // 1000:04d}/{i:07d}/video.mp4",
                label=int(fake),
                method=METHODS[i % 7] if fake else None,
                split="train" if i % 10 else "val",
                source=f"fn{i - i % 3:07d}" if fake else None,
            )
        )
    return out


def crop_pool(rng: np.random.Generator, n: int = 32) -> list[bytes]:
    """Small real JPEGs (the crops a `crop.save` build stores, scaled down to keep the disk small)."""
    pool = []
    for _ in range(n):
        pixels = (rng.random((48, 48, 3)) * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=70)
        pool.append(buffer.getvalue())
    return pool


def shard_tables(plan, schemas, rng: np.random.Generator, crops: list[bytes]) -> tuple[dict, dict]:
    """One shard's three tables, columnar, and the stats a worker puts in its marker."""
    tasks = plan.videos
    n_videos = len(tasks)
    failed = rng.random(n_videos) < 0.01
    n_faces = np.where(failed, 0, rng.poisson(12, n_videos)).astype(np.int32)
    n_ids = np.where(n_faces > 0, rng.choice([1, 2, 3], n_videos, p=[0.7, 0.22, 0.08]), 0).astype(np.int32)
    total = int(n_faces.sum())
    owner = np.repeat(np.arange(n_videos), n_faces)
    identity = (rng.integers(0, 1 << 30, total) % np.maximum(n_ids[owner], 1)).astype(np.int32)
    identity[rng.random(total) < 0.03] = -1
    frame = (
        np.concatenate([np.arange(k, dtype=np.int32) * 25 for k in n_faces])
        if total
        else np.zeros(0, np.int32)
    )
    ratio = np.clip(rng.lognormal(1.6, 0.7, total), 0, 100).astype(np.int16)
    emb = rng.standard_normal((total, DIM), dtype=np.float32).astype(np.float16)
    ids = np.array([t.video_id for t in tasks])
    faces = {
        "video_id": pa.array(ids[owner]),
        "frame": pa.array(frame),
        "face": pa.array(np.zeros(total, np.int16)),
        "identity": pa.array(identity),
        "x1": pa.array(np.full(total, 100, np.float32)),
        "y1": pa.array(np.full(total, 80, np.float32)),
        "x2": pa.array(np.full(total, 260, np.float32)),
        "y2": pa.array(np.full(total, 280, np.float32)),
        "score": pa.array(rng.random(total, dtype=np.float32)),
        "area_ratio": pa.array(ratio),
        "size_bucket": pa.array((np.minimum(ratio, 100) + 4) // 5 + (ratio == 0)).cast(pa.int8()),
        "emb_rgb": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), DIM),
        "crop": pa.array([crops[i] for i in rng.integers(0, len(crops), total)], pa.binary()),
    }
    reasons = rng.choice(REASONS, n_videos)
    video_columns = {
        "video_id": ids,
        "path": [t.path for t in tasks],
        "label": [t.label for t in tasks],
        "method": [t.method for t in tasks],
        "source": [t.source for t in tasks],
        "status": np.where(failed, "error", np.where(n_faces > 0, "ok", "no_faces")),
        "error": [r if f else None for r, f in zip(reasons, failed, strict=True)],
        "fps": np.full(n_videos, 25.0),
        "n_frames": np.full(n_videos, 250, np.int32),
        "width": np.full(n_videos, 1280, np.int32),
        "height": np.full(n_videos, 720, np.int32),
        "n_faces": n_faces,
        "n_identities": n_ids,
        "seconds": np.full(n_videos, 0.5, np.float32),
        "split": [t.split for t in tasks],
        "shard": np.full(n_videos, plan.shard_id, np.int32),
    }
    id_owner = np.repeat(np.arange(n_videos), n_ids)
    identities = {
        "video_id": ids[id_owner],
        "identity": np.concatenate([np.arange(k, dtype=np.int32) for k in n_ids]) if len(id_owner) else [],
        "split": [tasks[i].split for i in id_owner],
        "shard": np.full(len(id_owner), plan.shard_id, np.int32),
    }
    tables = {
        "videos": _table(video_columns, schemas["videos"]),
        "faces": _table(faces, schemas["faces"]),
        "identities": _table(identities, schemas["identities"]),
    }
    seconds = {stage: round(float(rng.gamma(2.0, 3.0)), 3) for stage in STAGES}
    stats = {
        "shard": plan.shard_id,
        "videos": n_videos,
        "faces": total,
        "identities": int(n_ids.sum()),
        "stage_seconds": seconds,
        "seconds": round(sum(seconds.values()), 3),
    }
    return tables, stats


def _table(columns: dict, schema: pa.Schema) -> pa.Table:
    n = len(next(iter(columns.values())))
    arrays = [
        columns[f.name]
        if isinstance(columns.get(f.name), pa.Array)
        else pa.array(columns[f.name], f.type)
        if f.name in columns
        else pa.nulls(n, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_output(uri: str, n_videos: int) -> dict:
    plans = plan_shards(videos(n_videos), SHARD_SIZE)
    schemas = table_schemas(emb_rgb_dim=DIM, with_crop=True)
    weights = {"embed": {"name": "repvit", "fingerprint": "bench", "random": True}}
    out = Output.open(uri, config={"preset": "megatron", "bench": "report"}, weights=weights, rebuild=True)
    rng = np.random.default_rng(0)
    crops = crop_pool(rng)
    try:
        out.set_plan(plans)
        for plan in plans:
            tables, stats = shard_tables(plan, schemas, rng, crops)
            out.commit_shard(plan, tables, stats)
    finally:
        out.close()
    state = out.state()
    return {
        "videos": sum(m["rows"]["videos"] for m in state.markers.values()),
        "faces": sum(m["rows"]["faces"] for m in state.markers.values()),
        "shards": len(state.markers),
        "bytes_on_disk": sum(m["bytes"] for m in state.markers.values()),
    }


def run_child(what: str, uri: str, page: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, what, uri, page], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=FORGERYNET_VIDEOS)
    parser.add_argument(
        "--out", type=Path, default=None, help="work directory (kept; reused if it holds one)"
    )
    args = parser.parse_args()

    work = args.out or Path(tempfile.mkdtemp(prefix="bench-report-"))
    uri = str(work / "dataset")
    started = time.perf_counter()
    if (work / "dataset" / "_faceshard.json").exists():
        print("reusing the output in", uri)
        shape = {}
    else:
        shape = write_output(uri, args.videos)
        print(f"wrote {shape} in {time.perf_counter() - started:.0f}s")
    page = str(work / "report.html")
    results = {what: run_child(what, uri, page) for what in ("imports", "html", "terminal")}
    results["html"]["page_mib"] = round(Path(page).stat().st_size / 2**20, 2)
    print(json.dumps({"output": shape, **results}, indent=2))
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
