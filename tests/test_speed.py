"""#10: bounded per-video cost, batched per-second detection, light driver, GPU check that needs no
Prefect/Ray/polars. (Speed itself is measured by `faceshard bench build`, never in a timed test.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from clips import write_video
from conftest import REPO

from faceshard.config import load_config
from faceshard.records import Detections, VideoTask
from faceshard.storage.commit import dataset_fingerprint
from faceshard.tasks.pipeline import VideoProcessor, weights_manifest
from faceshard.tasks.repeats import RepeatAwareDetector

FORBIDDEN = ("prefect", "ray", "polars")


def _modules(folder: str) -> list[str]:
    return [
        f"faceshard.{folder}.{p.stem}" for p in sorted((REPO / folder).glob("*.py")) if p.stem != "__init__"
    ]


def test_tasks_and_models_import_without_prefect_ray_polars() -> None:
    """What the GPU machine lacks must not be needed by the per-video pipeline (tasks/ + models/)."""
    modules = [*_modules("tasks"), *_modules("models"), "faceshard.bench.gpu_check"]
    code = (
        "import importlib, sys\nfrom faceshard.bench.gpu_check import forbid_imports\nforbid_imports()\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
        "assert not bad, bad\n"
        "try:\n    import polars\nexcept ImportError:\n    print('blocked')\n"
    )
    env = {**os.environ, "FACESHARD_FORBID_IMPORTS": ",".join(FORBIDDEN)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("blocked")  # the guard is live, so the imports above proved it


def test_the_driver_checks_and_fingerprints_without_model_libraries_or_prefect() -> None:
    """What the build's driver runs before Ray starts (`flows.local`: the manifest check, fingerprinting
    the weights of the MINTIME work from their files) imports neither torch nor Prefect: seconds of
    start-up on the critical path. Only the workers load the models, and Prefect is imported while
    they start. (tests/test_noop_build.py checks every preset, embeddings and depth included.)"""
    code = (
        "import sys\nimport faceshard.flows.local\nfrom faceshard.config import load_config\n"
        "from faceshard.flows.plan import dataset_weights\n"
        "weights = dataset_weights(load_config('mintime', overrides=['identity.embedder=dlib', 'embed.enabled=false']))\n"
        "assert set(weights) == {'detector', 'identity'}, weights\n"
        "print(sorted(m for m in ('torch', 'timm', 'facenet_pytorch', 'dlib', 'prefect') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def _faces_clip(tmp_path: Path) -> Path:
    """10 fps, 6 s: seconds 1 and 3 start face-less and show the face from frame 4 of the second."""
    face = cv2.resize(skimage.data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    empty = cv2.resize(skimage.data.coffee(), (256, 256), interpolation=cv2.INTER_AREA)
    frames = [(empty if (i // 10) in (1, 3) and i % 10 < 4 else face) for i in range(60)]
    frames = [np.ascontiguousarray(np.roll(f, i % 3, axis=1)) for i, f in enumerate(frames)]
    return write_video(tmp_path / "faces.mp4", frames)


def _faces(processor: VideoProcessor, path: Path) -> list[tuple[int, tuple[float, ...]]]:
    result = processor(VideoTask("v", str(path), 0), 0)
    assert result.video["status"] == "ok", result.video
    return [(row["frame"], (row["x1"], row["y1"], row["x2"], row["y2"])) for row in result.faces]


def test_batched_per_second_detection_gives_the_sequential_result(tmp_path: Path) -> None:
    """First frames of many seconds in one detector call, fallback only where empty: same faces as one
    frame per call; the bounded fallback crops the evenly spaced try (frame 17 = 10 + 7) that has one."""
    path = _faces_clip(tmp_path)
    base = ["detect.backend=dlib", "detect.upsample=1", "identity.enabled=false", "depth.enabled=false"]
    base += ["embed.enabled=false", "crop.save=false", "runtime.device=cpu"]
    calls: list[int] = []
    results = {}
    for batch in (1, 8):
        processor = VideoProcessor(load_config("demo", overrides=[*base, f"detect.batch_size={batch}"]))
        inner = processor.detect.detector
        processor.detect.detector = lambda frames, inner=inner: calls.append(len(frames)) or inner(frames)
        results[batch] = _faces(processor, path)
    assert results[1] == results[8]
    assert sorted({frame for frame, _ in results[8]}) == [0, 17, 20, 37, 40, 50]
    assert max(calls) > 1  # the batched run really sent several frames per call
    exhaustive = VideoProcessor(load_config("demo", overrides=[*base, "sampling.fallback_frames=all"]))
    assert sorted({frame for frame, _ in _faces(exhaustive, path)}) == [0, 14, 20, 34, 40, 50]


def test_repeated_frames_reuse_detections_exactly() -> None:
    calls: list[int] = []
    marker = Detections(np.array([[1, 2, 3, 4]], np.float32), np.array([0.9], np.float32))

    def detector(frames: list[np.ndarray]) -> list[Detections]:
        calls.append(len(frames))
        return [marker if f[0, 0, 0] else Detections.empty() for f in frames]

    a, b = np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8)
    detect = RepeatAwareDetector(detector)
    out = detect([a, a.copy(), b, b.copy()])
    assert calls == [2] and [len(d) for d in out] == [0, 0, 1, 1]
    assert [len(d) for d in detect([b.copy(), a])] == [1, 0] and calls == [2, 1]
    detect.reset()
    detect([b])
    assert calls == [2, 1, 1]


def test_faceless_long_video_costs_a_bounded_number_of_detections(tmp_path: Path) -> None:
    """A face-less still video: about one detection per distinct picture, never one per frame."""
    still = cv2.resize(skimage.data.coffee(), (320, 240), interpolation=cv2.INTER_AREA)
    frames = [still] * 100 + [np.ascontiguousarray(still[:, ::-1])] * 100  # 20 s at 10 fps, two pictures
    path = write_video(tmp_path / "still.mp4", frames)
    processor = VideoProcessor(
        load_config(
            "demo", overrides=["identity.enabled=false", "depth.enabled=false", "embed.enabled=false"]
        )
    )
    calls: list[int] = []
    processor.detect.detector = lambda frames: (
        calls.append(len(frames)) or [Detections.empty() for _ in frames]
    )
    result = processor(VideoTask("v", str(path), 0), 0)
    assert result.video["status"] == "no_faces" and result.video["n_frames"] == 200
    assert sum(calls) <= 20 * 3  # 20 seconds × (first frame + 2 tries) at most
    assert sum(calls) < 20  # and a still picture is not re-detected


def test_weights_fingerprint_loads_no_model_and_follows_content_not_location(tmp_path, monkeypatch) -> None:
    """#11.7: the same weights file at another path gives the same dataset fingerprint; the driver
    computes it from files alone."""
    import torch
    from facenet_pytorch import InceptionResnetV1

    first = tmp_path / "a" / "facenet.pt"
    first.parent.mkdir()
    torch.manual_seed(0)
    torch.save(InceptionResnetV1(pretrained=None, classify=False).state_dict(), first)
    second = tmp_path / "b" / "moved.pt"
    second.parent.mkdir()
    shutil.copy(first, second)

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded to fingerprint weights")

    monkeypatch.setattr("faceshard.models.registry.cached_model", no_loading)
    monkeypatch.setattr("faceshard.models.depth.cached_model", no_loading)
    monkeypatch.setattr("faceshard.models.embedders.cached_model", no_loading)
    fingerprints = []
    for weights in (first, second):
        cfg = load_config(
            "mintime", overrides=[f"identity.weights={weights}", "runtime.allow_random_weights=true"]
        )
        manifest = weights_manifest(cfg)
        assert manifest["embed"]["random"] and manifest["identity"]["source"] == str(weights.resolve())
        fingerprints.append(dataset_fingerprint(cfg.row_affecting(), manifest))
    assert fingerprints[0] == fingerprints[1]
    torch.manual_seed(1)
    torch.save(InceptionResnetV1(pretrained=None, classify=False).state_dict(), second)  # other content
    cfg = load_config(
        "mintime", overrides=[f"identity.weights={second}", "runtime.allow_random_weights=true"]
    )
    assert dataset_fingerprint(cfg.row_affecting(), weights_manifest(cfg)) != fingerprints[0]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_without_prefect_or_ray(shared_fixtures: Path, tmp_path: Path) -> None:
    """The GPU script's smoke mode: every stage, worker processes, forbidden imports, JSON report."""
    out = tmp_path / "gpu.json"
    command = [sys.executable, "-m", "faceshard.bench.gpu_check", "--device", "cpu", "--videos", "2"]
    command += ["--workers", "1", "--depth-size", "28", "--fixtures", str(shared_fixtures)]
    command += ["--work", str(tmp_path / "work"), "--json-out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["videos"] == 2 and report["status_counts"] == {"ok": 2} and report["faces"] > 0
    assert {"detect", "identity", "depth", "embed", "embed_depth"} <= set(report["stage_seconds"])
    assert report["videos_per_s"] > 0 and report["projection_forgerynet_hours"] > 0
    assert "ForgeryNet (221,247 videos)" in done.stderr


def test_worker_peak_memory_is_its_own_not_its_parents() -> None:
    """`ru_maxrss` of a process started by a big one reports the parent's peak (Linux keeps it across
    exec), which made every clip's worker look the same size; the benchmark reads VmHWM instead."""
    parent_peak = np.ones(600 * 1024 * 1024 // 8)  # ~600 MB resident in this process
    code = "from faceshard.bench.worker import peak_rss_mb; print(peak_rss_mb())"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert float(done.stdout.strip()) < 300  # the child's own few tens of MB
    del parent_peak


def test_model_stage_benchmark_times_our_stages_and_facenets_detect(shared_fixtures: Path) -> None:
    """`faceshard bench build --part stages` on two real frames: every figure is measured (not a
    stale attribute of a wrapper), and the MTCNN stage found the fixture's face."""
    from faceshard.bench.build import model_stages

    report = model_stages(shared_fixtures / "forgerynet_real_1_face.mp4", n_frames=2)
    mtcnn, identity = report["mtcnn"], report["dlib_identity"]
    assert mtcnn["frames"] == 2 and identity["faces"] >= 2
    assert min(mtcnn["ours_s"], mtcnn["bare_s"], mtcnn["facenet_detect_s"], identity["ours_s"]) > 0
    assert mtcnn["facenet_over_ours"] == round(mtcnn["facenet_detect_s"] / mtcnn["ours_s"], 2)
