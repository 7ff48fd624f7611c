"""`faceshard bench build`: the whole build against decoding alone, measured in one run on the same files.

What it prints (and writes as JSON with `--json-out`):

* end-to-end: `faceshard build` run as a new user runs it (a fresh process: imports, Prefect server,
  Ray, weights fingerprints, workers loading models, every video, commits) over 21 real clips made
  from the fixtures, against PyAV decoding the same files (every frame, no conversion), measured just
  before and just after the build; the ratio is wall ÷ mean decode-only. Start-up (everything before
  the flow's first shard) is reported apart from the steady state (videos/s of the workers). With
  `--repeat N` the build runs N times and the run with the median ratio is reported, with all N ratios.
* a face-less 2-minute 1080p clip and a 5-second 1080p clip, each in a fresh worker process: the
  video's pipeline seconds against its own decode-only time, and peak worker memory (must be flat).
* model stages against a bare batched call of the same model on the same inputs (MTCNN, dlib).

The default work is the MINTIME preset's (per-second MTCNN, crops, identities) with the offline dlib
identity embedder and no embeddings (FaceNet and EfficientNet weights are not reachable offline).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av

from faceshard.bench.clips import faceless_clip, fixture_frames, real_clips, short_clip

MINTIME_WORK = ("identity.embedder=dlib", "embed.enabled=false", "runtime.device=cpu")


def decode_only(paths: list[Path]) -> float:
    """Seconds for PyAV to decode every frame of `paths` with its default threading, as our decoder does
    (FFmpeg's frame threading, "AUTO", cost ~15 % more CPU and was slower on 2 cores)."""
    started = time.perf_counter()
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for _ in container.decode(stream):
                pass
    return time.perf_counter() - started


def _faceshard_command() -> list[str]:
    script = Path(sys.executable).with_name("faceshard")
    return (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from faceshard.app.cli import app; app()"]
    )


def _clean_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PREFECT_HOME"] = str(work / "prefect-home")
    return env


def write_manifest(clips: list[Path], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for clip in clips:
            writer.writerow([str(clip), int("fake" in clip.name)])
    return path


def end_to_end(
    clips: list[Path], work: Path, preset: str, sets: list[str], shard_size: int, repeat: int = 1
) -> dict[str, Any]:
    """`repeat` times: one `faceshard build` in a fresh process, between two decode-only passes over
    the same files (each pass is shared by the builds on either side of it). The run with the median
    ratio is reported in full, with every run's ratio beside it: these machines are noisy."""
    manifest = write_manifest(clips, work / "manifest.csv")
    out = work / "dataset"
    command = [*_faceshard_command(), "build", str(manifest), "--out", str(out), "--preset", preset, "--json"]
    command += ["--shard-size", str(shard_size), *(arg for s in sets for arg in ("--set", s))]
    decodes = [decode_only(clips)]
    runs = []
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        done = subprocess.run(command, env=_clean_env(work), capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        decodes.append(decode_only(clips))
        if done.returncode != 0:
            raise RuntimeError(f"faceshard build failed ({done.returncode}):\n{done.stderr[-3000:]}")
        summary = json.loads(done.stdout[done.stdout.index("{") :])
        runs.append(_build_run(out, summary, wall, decodes[-2], decodes[-1]))
    median = sorted(runs, key=lambda run: run["ratio"])[(len(runs) - 1) // 2]
    return {**median, "runs": len(runs), "ratios": [run["ratio"] for run in runs]}


def _build_run(
    out: Path, summary: dict[str, Any], wall: float, decode_before: float, decode_after: float
) -> dict:
    """One build's figures, from its summary and what it committed."""
    import pyarrow.dataset as ds

    from faceshard.storage.status import dataset_status

    status = dataset_status(str(out))
    videos = ds.dataset(str(out / "videos"), format="parquet", partitioning="hive").to_table().to_pylist()
    decode = (decode_before + decode_after) / 2
    workers = os.cpu_count() or 1
    video_seconds = sum(v["seconds"] for v in videos)
    # `seconds` is the build's wall time from its start; what came before its first shard is start-up.
    flow_seconds = float(summary["seconds"]) - float(summary.get("startup_seconds", 0.0))
    return {
        "videos": len(videos),
        "frames": sum(v["n_frames"] or 0 for v in videos),
        "faces": sum(v["n_faces"] for v in videos),
        "identities": sum(v["n_identities"] for v in videos),
        "status_counts": summary["status_counts"],
        "build_wall_s": round(wall, 2),
        "decode_only_s": round(decode, 2),
        "decode_only_before_after_s": [round(decode_before, 2), round(decode_after, 2)],
        "ratio": round(wall / decode, 2),
        "startup_s": round(wall - flow_seconds, 2),
        "flow_s": round(flow_seconds, 2),
        "workers": workers,
        "video_seconds_sum": round(video_seconds, 2),
        "steady_videos_per_s": round(len(videos) / (video_seconds / workers), 3) if video_seconds else None,
        "stage_seconds": status.get("stage_seconds"),
    }


def one_video(video: Path, preset: str, sets: list[str], work: Path) -> dict[str, Any]:
    """The video in a fresh worker process (after a decode-only pass over it), with its peak memory."""
    decode = decode_only([video])
    command = [sys.executable, "-m", "faceshard.bench.worker", str(video), "--preset", preset]
    command += [arg for s in sets for arg in ("--set", s)]
    done = subprocess.run(command, env=_clean_env(work), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker failed on {video}:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["decode_only_s"] = round(decode, 3)
    result["ratio"] = round(result["video_seconds"] / decode, 2)
    return result


def model_stages(clip: Path, n_frames: int = 8) -> dict[str, Any]:
    """Our MTCNN and dlib identity stages against a bare batched call of the same model.

    MTCNN is also timed as facenet-pytorch's own `MTCNN.detect`, whose answers our cascade
    reproduces (`models.mtcnn`), on the same PIL-halved frames.
    """
    import dlib
    import numpy as np
    import torch
    from facenet_pytorch import MTCNN
    from PIL import Image

    from faceshard.config import CropConfig, DetectConfig
    from faceshard.models.detectors import build_detector
    from faceshard.models.identity import DlibEmbedder, dlib_model_files, dlib_rectangle
    from faceshard.models.mtcnn import MTCNNCascade
    from faceshard.models.threads import limit_threads
    from faceshard.records import Frame
    from faceshard.tasks.crops import Cropper

    limit_threads(1)  # as a worker runs them (one CPU each)
    frames = fixture_frames(clip, limit=n_frames * 5)[::5]
    detect_cfg = DetectConfig(detect_scale=0.5, batch_size=n_frames)
    detector = build_detector(detect_cfg, "cpu")
    cascade = MTCNNCascade(
        detect_cfg.thresholds, detect_cfg.min_face_size, detect_cfg.factor, torch.device("cpu")
    )
    facenet = MTCNN(
        keep_all=True,
        select_largest=False,
        thresholds=list(detect_cfg.thresholds),
        min_face_size=detect_cfg.min_face_size,
        factor=detect_cfg.factor,
    )
    height, width = frames[0].shape[:2]
    size = (width // 2, height // 2)

    def halved() -> np.ndarray:
        return np.stack([np.asarray(Image.fromarray(f).resize(size)) for f in frames])

    ours_detect = _best(lambda: detector(frames))
    bare_detect_s = _best(lambda: cascade(halved()))
    facenet_detect_s = _best(lambda: facenet.detect(halved()))
    cropper = Cropper(CropConfig())
    faces = [face for i, f in enumerate(frames) for face in cropper(Frame(i, f), detector([f])[0])]
    embedder = DlibEmbedder()
    crops, boxes = [face.crop for face in faces], [face.box_in_crop for face in faces]

    def bare_identity() -> object:
        with torch.inference_mode():
            return embedder.model(torch.from_numpy(embedder.chips(crops, boxes)))  # type: ignore[arg-type]

    recogniser = dlib.face_recognition_model_v1(str(dlib_model_files()[0]))

    def dlib_cpp_identity() -> object:  # what the stage ran before: dlib-bin's own network
        images = [np.ascontiguousarray(crop) for crop in crops]
        shapes = []
        for image, box in zip(images, boxes, strict=True):
            shape = dlib.full_object_detections()
            shape.append(embedder.predictor(image, dlib_rectangle(box, image.shape)))  # type: ignore[operator]
            shapes.append(shape)
        return recogniser.compute_face_descriptor(images, shapes)

    bare_identity()  # torch's first forward at a batch size sets up its kernels: keep it out of both
    ours_identity, bare_identity_s = _best(lambda: embedder(faces)), _best(bare_identity)
    dlib_cpp_s = _best(dlib_cpp_identity, repeat=1)
    return {
        "mtcnn": {
            "frames": len(frames),
            "ours_s": ours_detect,
            "bare_s": bare_detect_s,
            "ratio": round(ours_detect / bare_detect_s, 2),
            "facenet_detect_s": facenet_detect_s,
            "facenet_over_ours": round(facenet_detect_s / ours_detect, 2),
        },
        "dlib_identity": {
            "faces": len(faces),
            "ours_s": ours_identity,
            "bare_s": bare_identity_s,
            "ratio": round(ours_identity / bare_identity_s, 2) if faces else None,
            "dlib_cpp_s": dlib_cpp_s,
        },
    }


def _best(run: Any, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return round(min(times), 4)


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_bench_build(
    fixtures: Path,
    work: Path,
    preset: str = "mintime",
    sets: tuple[str, ...] = MINTIME_WORK,
    shard_size: int = 4,
    parts: tuple[str, ...] = ("e2e", "long", "stages"),
    repeat: int = 1,
) -> dict[str, Any]:
    """Make the clips (once, under `work/clips`), then measure each part; returns the JSON report."""
    clips_dir = work / "clips"
    report: dict[str, Any] = {"machine": machine(), "preset": preset, "sets": list(sets)}
    if "e2e" in parts:
        report["end_to_end"] = end_to_end(
            real_clips(fixtures, clips_dir), work, preset, list(sets), shard_size, repeat
        )
    if "long" in parts:
        short = one_video(short_clip(fixtures, clips_dir), preset, list(sets), work)
        long = one_video(faceless_clip(fixtures, clips_dir), preset, list(sets), work)
        report["short_1080p_5s"] = short
        report["faceless_1080p_2min"] = long
        report["peak_rss_ratio_2min_vs_5s"] = round(long["peak_rss_mb"] / short["peak_rss_mb"], 3)
    if "stages" in parts:
        report["model_stages"] = model_stages(real_clips(fixtures, clips_dir)[3])
    return report
