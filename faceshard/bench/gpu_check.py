"""GPU check: the per-video pipeline with every stage, in several worker processes sharing one GPU.

    python -m faceshard.bench.gpu_check --device cuda --videos 200 --workers 4 --fixtures DIR
    python -m faceshard.bench.gpu_check --device cpu --videos 4 --workers 2   # smoke run, any machine

Runs WITHOUT Prefect, Ray and polars (they cannot be carried to the GPU machine; importing them here
fails on purpose): tasks/ and models/ only, in a `multiprocessing` pool whose workers load the models
once. Stages: MTCNN, FaceNet identities (a seeded random state dict written here: the vggface2 file is
not reachable), Depth Anything V2-Small layout and EfficientNet-B0 tokens + depth embeddings (seeded
random weights: speed does not depend on the weight values). The real fixtures are repeated to
`--videos`. Prints videos/s, GPU busy % (nvidia-smi sampled every 0.5 s), per-stage seconds, and the
projection for ForgeryNet's 221,247 videos; `--json-out` writes the same as JSON.
"""

from __future__ import annotations

import os
import sys

FORBIDDEN_DEFAULT = "prefect,ray,polars"


class _Forbid:
    """A meta-path finder refusing the forbidden top-level packages."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in self.names:
            raise ImportError(f"{name} is not available on the GPU machine; the pipeline must not need it")


def forbid_imports() -> tuple[str, ...]:
    """Refuse importing what cannot be carried to the GPU machine (FACESHARD_FORBID_IMPORTS, inherited
    by spawned workers), so a run here proves the pipeline does without them."""
    names = tuple(
        filter(None, os.environ.setdefault("FACESHARD_FORBID_IMPORTS", FORBIDDEN_DEFAULT).split(","))
    )
    if not any(isinstance(finder, _Forbid) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Forbid(names))
    return names


if __name__ in ("__main__", "__mp_main__"):  # the script and its spawned workers, before anything else
    forbid_imports()

import argparse  # noqa: E402 - after the import guard
import json  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

FORGERYNET_VIDEOS = 221_247
FIXTURE_GLOB = "*.mp4"
_PROCESSOR: Any = None


def random_facenet(path: Path) -> Path:
    """A seeded random InceptionResnetV1 state dict (the vggface2 file cannot be downloaded)."""
    import torch
    from facenet_pytorch import InceptionResnetV1

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(InceptionResnetV1(pretrained=None, classify=False).state_dict(), path)
    return path


def check_config(device: str, facenet: Path, depth_size: int) -> list[str]:
    """Every stage on: MINTIME detection and identities, Megatron depth, embeddings of crops and depth."""
    return [
        f"runtime.device={device}",
        "runtime.allow_random_weights=true",
        "identity.embedder=facenet",
        f"identity.weights={facenet}",
        "depth.enabled=true",
        f"depth.input_size={depth_size}",
        "depth.save=true",
        "embed.enabled=true",
        "embed.depth=true",
        "crop.save=true",
    ]


def _init_worker(overrides: list[str], cpus: int) -> None:
    global _PROCESSOR
    forbid_imports()
    import warnings

    from faceshard.config import load_config
    from faceshard.models.threads import limit_threads
    from faceshard.tasks.pipeline import VideoProcessor

    warnings.filterwarnings("ignore", message="RANDOM WEIGHTS")
    limit_threads(cpus)
    _PROCESSOR = VideoProcessor(load_config("mintime", overrides=overrides))


def _warm(_: int) -> int:
    return os.getpid()


def _process(item: tuple[int, str]) -> dict[str, Any]:
    from faceshard.records import VideoTask

    index, path = item
    result = _PROCESSOR(VideoTask(f"v{index:05d}", path, 0), 0)
    return {
        "status": result.video["status"],
        "error": result.video["error"],
        "faces": result.video["n_faces"],
        "seconds": result.video["seconds"],
        "stages": result.seconds,
    }


class GpuSampler:
    """`nvidia-smi` utilisation and memory every 0.5 s on a thread; nothing when there is no nvidia-smi."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
            self._proc = subprocess.Popen([*query, "-lms", "500"], stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                util, memory = (float(v) for v in line.split(",")[:2])
            except ValueError:
                continue
            self.samples.append((util, memory))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)

    def summary(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        utils = [u for u, _ in self.samples]
        return {
            "samples": len(utils),
            "busy_mean_pct": round(sum(utils) / len(utils), 1),
            "busy_over_50_pct_of_time": round(100 * sum(u > 50 for u in utils) / len(utils), 1),
            "memory_peak_mib": max(m for _, m in self.samples),
        }


def run_check(
    fixtures: Path, device: str, videos: int, workers: int, work: Path, depth_size: int
) -> dict[str, Any]:
    clips = sorted(fixtures.glob(FIXTURE_GLOB))
    if not clips:
        raise SystemExit(f"no {FIXTURE_GLOB} clips in {fixtures}")
    overrides = check_config(device, random_facenet(work / "facenet_random_seed0.pt"), depth_size)
    overrides.append(f"detect.batch_size={16 if device == 'cuda' else 4}")
    cpus = max(1, (os.cpu_count() or 1) // workers)
    items = [(i, str(clips[i % len(clips)])) for i in range(videos)]
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked workers
    started = time.perf_counter()
    with context.Pool(workers, initializer=_init_worker, initargs=(overrides, cpus)) as pool:
        pids = set(pool.map(_warm, range(workers * 4), chunksize=1))
        startup = time.perf_counter() - started
        with GpuSampler() as sampler:
            begun = time.perf_counter()
            results = list(pool.imap_unordered(_process, items, chunksize=1))
            wall = time.perf_counter() - begun
    stages: Counter[str] = Counter()
    for result in results:
        stages.update(result["stages"])
    rate = len(results) / wall
    return {
        "device": device,
        "gpu": _gpu_name() if device.startswith("cuda") else None,
        "workers": workers,
        "worker_pids_seen": len(pids),
        "cpus_per_worker": cpus,
        "videos": len(results),
        "status_counts": dict(Counter(r["status"] for r in results)),
        "errors": sorted({r["error"] for r in results if r["error"]})[:5],
        "faces": sum(r["faces"] for r in results),
        "startup_s": round(startup, 2),
        "wall_s": round(wall, 2),
        "videos_per_s": round(rate, 3),
        "gpu_utilisation": sampler.summary(),
        "stage_seconds": {k: round(v, 2) for k, v in sorted(stages.items())},
        "projection_forgerynet_hours": round(FORGERYNET_VIDEOS / rate / 3600, 1),
    }


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--fixtures", type=Path, default=Path("../shared/fixtures"))
    parser.add_argument("--work", type=Path, default=Path("gpu-check-work"))
    parser.add_argument("--depth-size", type=int, default=518, help="Depth Anything input size (SPEC: 518)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = run_check(args.fixtures, args.device, args.videos, args.workers, args.work, args.depth_size)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    busy = (report["gpu_utilisation"] or {}).get("busy_mean_pct")
    print(
        f"{report['videos']} videos on {report['device']} ({report['workers']} workers): "
        f"{report['videos_per_s']} videos/s, GPU busy {busy if busy is not None else 'n/a'} %, "
        f"start-up {report['startup_s']} s; ForgeryNet (221,247 videos): "
        f"{report['projection_forgerynet_hours']} h",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
