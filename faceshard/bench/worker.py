"""One video through the whole per-video pipeline in a fresh process, as a worker runs it.

    python -m faceshard.bench.worker VIDEO [--preset mintime] [--set key=value ...] [--cpus 1]

Prints one JSON object: the video's seconds (per stage too), model-loading seconds, and the process's
peak resident memory after loading the models and after the video (what a worker needs).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB.

    Linux's `VmHWM` where there is one: `ru_maxrss` also counts the parent's peak from before the
    exec that started this process (Linux keeps it across exec), so a worker started by a big
    benchmark process would report the benchmark's memory.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("video")
    parser.add_argument("--preset", default="mintime")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--cpus", type=float, default=1.0)
    args = parser.parse_args(argv)

    from faceshard.config import load_config
    from faceshard.models.threads import limit_threads
    from faceshard.records import VideoTask
    from faceshard.tasks.pipeline import VideoProcessor

    limit_threads(args.cpus)
    cfg = load_config(args.preset, overrides=args.sets)
    started = time.perf_counter()
    processor = VideoProcessor(cfg)
    load_seconds = time.perf_counter() - started
    rss_loaded = peak_rss_mb()
    result = processor(VideoTask("bench", args.video, 0), 0)
    print(
        json.dumps(
            {
                "video": args.video,
                "status": result.video["status"],
                "error": result.video["error"],
                "n_frames": result.video["n_frames"],
                "n_faces": result.video["n_faces"],
                "video_seconds": result.video["seconds"],
                "stage_seconds": {k: round(v, 3) for k, v in result.seconds.items()},
                "load_seconds": round(load_seconds, 3),
                "peak_rss_mb_after_load": round(rss_loaded, 1),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
