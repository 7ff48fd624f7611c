"""Orchestration at ForgeryNet scale, simulated: the real flow over 221,247 videos in 865 shards.

Runs `run_build` as `faceshard build` does — a Prefect API server, a local Ray cluster, the bounded
fan-out (`runtime.max_in_flight`), one Prefect task and one commit per shard, progress and table
artifacts — with the per-video work replaced by a stand-in that returns a `no_faces` row per video
without opening its file. The stand-in lives in this script only: it is installed into this
driver and, through Ray's `worker_process_setup_hook`, into the workers of the Ray cluster this
script starts; nothing the CLI runs can reach it.

The manifest is ForgeryNet-shaped (every file `video.mp4` in its own folder, train/val splits,
forgery methods) with a `video_id` column; no file exists: the stand-in never opens one.

Prints wall time (whole build, and the fan-out alone), orchestration seconds per shard, the peak
RSS of the driver and of the Prefect server, and checks that every shard committed with one row
per video.

    .venv/bin/python benchmarks/bench_orchestration.py [--videos 221247] [--shard-size 256] [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

FORGERYNET_VIDEOS = 221_247
METHODS = [None, "faceswap", "reenact", "attribute", "fomm", "deepfakes", "stargan", "talkinghead"]


class StandInProcessor:
    """Benchmark-only per-video work: one `no_faces` videos row, the file never opened."""

    def __init__(self) -> None:
        self.weights = {"detector": {"name": "stand-in", "source": "benchmark", "fingerprint": "stand-in:1"}}
        self.dims: dict[str, Any] = {}  # no embedding columns

    def __call__(self, video: Any, shard_id: int, group: Any = None) -> Any:
        from faceshard.storage.schema import video_row
        from faceshard.tasks.pipeline import VideoResult

        row = video_row(video, shard_id, status="no_faces", fps=25.0, n_frames=0, width=1280, height=720)
        return VideoResult(video=row)


def install_stand_in() -> None:
    """Make this process's shards use the stand-in (driver: fingerprint; Ray workers: shards)."""
    import faceshard.tasks.shard as shard

    stand_in = StandInProcessor()
    shard.get_processor = lambda cfg: stand_in


def write_manifest(path: Path, n: int) -> None:
    """ForgeryNet's layout: `<split>_release/<group>/<clip>/video.mp4`, ~1/3 real."""
    ids = range(n)
    table = pa.table(
        {
            "path": [
                f"{'train' if i % 10 else 'val'}_release/{i // 1000:04d}/{i:07d}/video.mp4" for i in ids
            ],
            "label": [0 if i % 3 == 0 else 1 for i in ids],
            "method": [None if i % 3 == 0 else METHODS[1 + i % 7] for i in ids],
            "split": ["train" if i % 10 else "val" for i in ids],
            "video_id": [f"fn{i:07d}" for i in ids],
        }
    )
    pq.write_table(table, path)


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def peak_rss_mib(pid: int) -> float:
    """Peak resident set (VmHWM) of a live process."""
    return _status_mib(pid, "VmHWM")


def rss_mib(pid: int) -> float:
    """Resident set (VmRSS) of a live process now."""
    return _status_mib(pid, "VmRSS")


class ProgressLog:
    """The CLI bar's listener, here recording when the fan-out started and each shard finished."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.total = 0
        self.failed = 0

    def __call__(self, progress: Any) -> None:
        self.times.append(time.perf_counter())
        self.total, self.failed = progress.shards_total, progress.shards_failed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=FORGERYNET_VIDEOS)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--max-in-flight", type=int, default=None, help="default: twice the slots")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-orch-"))
    shutil.rmtree(work / "out", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(work / "prefect")
    os.environ.pop("PREFECT_API_URL", None)

    from faceshard.flows.runtime import apply_local_defaults

    apply_local_defaults()
    import ray
    from prefect.server.api.server import SubprocessASGIServer

    from faceshard.config import RuntimeConfig, load_config
    from faceshard.flows.fanout import in_flight_limit
    from faceshard.flows.local import run_build
    from faceshard.flows.runtime import ray_init_kwargs
    from faceshard.storage.commit import Output

    manifest = work / "manifest.parquet"
    started = time.perf_counter()
    write_manifest(manifest, args.videos)
    print(f"manifest: {args.videos} rows written in {time.perf_counter() - started:.1f}s")

    started = time.perf_counter()
    server = SubprocessASGIServer()
    server.start(timeout=300)
    os.environ["PREFECT_API_URL"] = server.api_url
    runtime = RuntimeConfig(num_cpus=args.cpus, max_in_flight=args.max_in_flight)
    init = ray_init_kwargs(runtime)
    init["runtime_env"]["worker_process_setup_hook"] = install_stand_in
    init["log_to_driver"] = False
    ray.init(**init)
    install_stand_in()
    print(f"prefect server + ray ({args.cpus} CPUs) up in {time.perf_counter() - started:.1f}s")

    cfg = load_config("demo", shard_size=args.shard_size)
    cfg = cfg.model_copy(
        update={"runtime": cfg.runtime.model_copy(update={"max_in_flight": args.max_in_flight})}
    )
    progress = ProgressLog()
    out = work / "out"
    driver_before = rss_mib(os.getpid())  # libraries imported, servers up, nothing planned yet
    try:
        started = time.perf_counter()
        summary = run_build(str(manifest), str(out), cfg, on_progress=progress)
        wall = time.perf_counter() - started
        limit = in_flight_limit(cfg.runtime)
        server_peak = peak_rss_mib(server.server_process.pid)
    finally:
        ray.shutdown()
        server.stop()
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    state = Output(str(out), summary["fingerprint"]).state()
    committed = len(state.markers)
    rows = sum(marker["rows"]["videos"] for marker in state.markers.values())
    shards = summary["shards_total"]
    fan_out = progress.times[-1] - progress.times[0]
    report = {
        "videos": args.videos,
        "shards": shards,
        "shard_size": args.shard_size,
        "ray_cpus": args.cpus,
        "max_in_flight": limit,
        "wall_s": round(wall, 1),
        "before_first_submit_s": round(progress.times[0] - started, 1),
        "fan_out_s": round(fan_out, 1),
        "orchestration_s_per_shard": round(fan_out / shards, 3),
        "slot_s_per_shard": round(fan_out * args.cpus / shards, 3),
        "stand_in_s_per_shard": round(_mean_task_seconds(state), 4),
        "driver_rss_before_build_mib": round(driver_before),
        "driver_peak_rss_mib": round(driver_peak),
        "prefect_server_peak_rss_mib": round(server_peak),
        "committed_shards": committed,
        "committed_video_rows": rows,
        "failed_shards": len(summary["failed_shards"]),
    }
    print(json.dumps(report, indent=2))
    ok = committed == shards and rows == args.videos and not summary["failed_shards"]
    print("every shard committed" if ok else "NOT every shard committed")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    raise SystemExit(0 if ok else 1)


def _mean_task_seconds(state: Any) -> float:
    """Mean seconds the stand-in spent per shard inside the task (the per-video work replaced)."""
    seconds = [marker["stats"]["seconds"] for marker in state.markers.values()]
    return sum(seconds) / len(seconds) if seconds else 0.0


if __name__ == "__main__":
    main()
