"""Megatron's samples by Megatron's own rules (SPEC §8), against independent transcriptions of its code.

The oracles (tests/oracles.py) are written from Megatron's src/megatron/video_dataloader.py and
preprocessing.py and from transformers 4.44.2's depth-estimation pipeline, never from ours; each case
is randomized and goes through our real code path (selector, detector keep policy, cropper, sample).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2
import numpy as np
import pytest
import torch
from clips import write_video
from oracles import (
    megatron_label,
    megatron_positional_encoding,
    megatron_video_crops,
    transformers_444_depth,
)

from faceshard.config import CropConfig, load_config
from faceshard.intake import get_format
from faceshard.models import registry
from faceshard.models.depth import to_uint8_map
from faceshard.records import Detections, Frame, VideoTask
from faceshard.storage.sequences import megatron_sample
from faceshard.tasks.crops import Cropper
from faceshard.tasks.pipeline import VideoProcessor

N = 6  # Megatron's num_frame, small for speed (its default is 20)


class ScriptedHog:
    """dlib's HOG detector answering `run(img, upsample, threshold)` from a script, one frame per call:
    rectangles in dlib's own order (most confident first), as `dlib.rectangle`s."""

    def __init__(self, script: list[list[tuple[int, int, int, int]]]) -> None:
        import dlib

        self.script = [[dlib.rectangle(*r) for r in rects] for rects in script]
        self.calls = 0

    def run(self, img: np.ndarray, upsample: int, threshold: float) -> tuple[list, list, list]:
        rects = self.script[self.calls]
        self.calls += 1
        scores = [1.0 - 0.1 * k for k in range(len(rects))]
        return rects, scores, [0] * len(rects)


def random_script(rng: np.random.Generator, n_frames: int, width: int, height: int) -> list[list[tuple]]:
    """Per frame 0–3 rectangles (left, top, right, bottom); some start left of or above the frame (a
    negative corner) or run past its far edges, as dlib's boxes do at the borders."""
    script = []
    p_empty = rng.choice([0.0, 0.05, 0.2])
    for _ in range(n_frames):
        count = 0 if rng.random() < p_empty else int(rng.integers(1, 4))
        rects = []
        for _ in range(count):
            w, h = int(rng.integers(8, 40)), int(rng.integers(8, 40))
            left = int(rng.integers(-6, width - 4)) if rng.random() < 0.1 else int(rng.integers(0, width - 8))
            top = (
                int(rng.integers(-6, height - 4)) if rng.random() < 0.1 else int(rng.integers(0, height - 8))
            )
            rects.append((left, top, left + w - 1, top + h - 1))
        script.append(rects)
    return script


def cv2_rgb_frames(path: Path) -> tuple[list[np.ndarray], int]:
    """What Megatron reads: cv2.VideoCapture frames, BGR → RGB (video_dataloader.py:165-169)."""
    capture = cv2.VideoCapture(str(path))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames, total


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    registry.clear_model_cache()


def test_first_face_of_leading_frames_and_the_drop_rule_match_megatrons_loader(tmp_path: Path) -> None:
    """Randomized videos and detector answers through our whole per-video path (leading:N, keep first,
    dlib_rect crops, the megatron sample) against Megatron's loop: same videos kept, same frames, the
    same pixels; videos it drops are the ones we drop, and they are counted."""
    cfg = load_config(
        "megatron",
        overrides=[
            f"sampling.strategy=leading:{N}",
            "depth.enabled=false",
            "embed.enabled=false",
            "identity.enabled=false",
            "crop.save=true",
            "crop.store=native",
        ],
    )
    processor = VideoProcessor(cfg, device="cpu")
    rng = np.random.default_rng(20)
    outcomes = {"kept": 0, "dropped": 0}
    for case in range(24):
        n_frames = int(rng.integers(N - 2, N + 4))
        width, height = 64, 48
        frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n_frames)]
        path = write_video(tmp_path / f"v{case}.mp4", frames)
        decoded, total = cv2_rgb_frames(path)
        script = random_script(rng, len(decoded), width, height)
        processor.detector._hog = ScriptedHog(script)  # type: ignore[attr-defined]
        label = int(rng.integers(0, 2))
        result = processor(VideoTask(f"v{case}", str(path), label), 0)
        faces = result.faces
        ours = megatron_sample(
            np.array([f["frame"] for f in faces], np.int64),
            np.array([f["face"] for f in faces], np.int64),
            np.array([[f["frame"]] for f in faces], np.float32).reshape(-1, 1),
            np.zeros((len(faces), 1), np.float32),
            label,
            length=N,
            positional=False,
        )
        theirs = megatron_video_crops(decoded, script, total, N)
        assert (ours is None) == (theirs is None), (case, script[:N])
        # Megatron read no frame past the first face-less one: neither did our detector
        ran = next((i for i, rects in enumerate(script[:N]) if not rects), min(N, len(script)) - 1) + 1
        assert processor.detector._hog.calls == min(ran, len(decoded))  # type: ignore[attr-defined]
        if theirs is None:
            outcomes["dropped"] += 1
            continue
        outcomes["kept"] += 1
        assert ours is not None and ours.rgb[:, 0].tolist() == list(range(N))  # frames 0…N-1
        for row, crop in zip(ours.rows, theirs, strict=True):
            stored = cv2.imdecode(np.frombuffer(faces[row]["crop"], np.uint8), cv2.IMREAD_COLOR)
            np.testing.assert_array_equal(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB), crop)
    assert outcomes["kept"] >= 5 and outcomes["dropped"] >= 5, outcomes  # both rules exercised


def test_dlib_rect_cuts_megatrons_pixels_inclusive_edges_and_numpy_slicing() -> None:
    """Megatron's cut (video_dataloader.py:190-196) on random rectangles, borders and negatives included."""
    rng = np.random.default_rng(7)
    cropper = Cropper(CropConfig(method="dlib_rect"))
    empty = 0
    for _ in range(400):
        height, width = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        left, top = int(rng.integers(-10, width)), int(rng.integers(-10, height))
        right, bottom = left + int(rng.integers(0, 60)), top + int(rng.integers(0, 60))
        dets = Detections(np.array([[left, top, right, bottom]], np.float32), np.ones(1, np.float32))
        faces = cropper(Frame(index=0, rgb=rgb), dets)
        (theirs,) = megatron_video_crops([rgb], [[(left, top, right, bottom)]], 1, 1) or [None]
        if theirs is None:  # an empty cut: Megatron's video fails, we keep no face
            empty += 1
            assert not faces or faces[0].crop.size == 0
            continue
        assert len(faces) == 1
        np.testing.assert_array_equal(faces[0].crop, theirs)
        if left >= 0 and top >= 0:  # inclusive corners: one pixel more than right - left
            assert theirs.shape[:2] == (min(bottom + 1, height) - top, min(right + 1, width) - left)
    assert 0 < empty < 400


def test_label_follows_megatrons_path_rule_on_an_ffpp_tree(tmp_path: Path) -> None:
    """Megatron labels a video 1 when "original" is in its path: on an FF++ tree, our intake's labels
    (1 = fake) become exactly that in the megatron sample. (Its rule reads the whole path, so a dataset
    folder named e.g. `original_ffpp` would make every video "original": the path below the FF++ root
    is what the rule is meant for.)"""
    rng = np.random.default_rng(3)
    for kind in ("youtube", "actors"):
        folder = tmp_path / "original_sequences" / kind / "c23" / "videos"
        folder.mkdir(parents=True)
        for i in rng.choice(1000, 4, replace=False):
            (folder / f"{i:03d}.mp4").touch()
    for method in ("Deepfakes", "FaceSwap", "NeuralTextures"):
        folder = tmp_path / "manipulated_sequences" / method / "c23" / "videos"
        folder.mkdir(parents=True)
        for i, j in rng.choice(1000, (4, 2), replace=False):
            (folder / f"{i:03d}_{j:03d}.mp4").touch()
    rows = get_format("ffpp").scan(tmp_path).frame.to_dicts()
    assert len(rows) == 20
    frame = np.arange(N)
    for row in rows:
        sample = megatron_sample(frame, np.zeros(N), np.ones((N, 2)), np.ones((N, 2)), row["label"], N)
        assert sample is not None and sample.label == megatron_label(os.path.relpath(row["path"], tmp_path))


def test_sample_is_float32_with_megatrons_positional_encoding_in_frame_order() -> None:
    """What its collate hands the model (video_dataloader.py:341-352): RepViT vectors of frames 0…N-1 in
    order plus its sinusoids, float32 (float16 stops its model: `Half != float`); rows in any order."""
    rng = np.random.default_rng(5)
    n = 20
    for _ in range(10):
        extra = int(rng.integers(0, 5))
        frame = np.concatenate([np.arange(n), np.arange(n, n + extra)])
        face = np.zeros(n + extra, np.int64)
        if rng.random() < 0.5:  # a second face in some frames (never Megatron's: it keeps the first)
            frame, face = np.concatenate([frame, [3, 7]]), np.concatenate([face, [1, 1]])
        order = rng.permutation(len(frame))
        frame, face = frame[order], face[order]
        rgb = rng.normal(size=(len(frame), 384)).astype(np.float16)
        depth = rng.normal(size=(len(frame), 384)).astype(np.float16)
        sample = megatron_sample(frame, face, rgb, depth, label=1, length=n)
        assert sample is not None and sample.rgb.dtype == np.float32 and sample.depth.dtype == np.float32
        first = np.array([np.flatnonzero((frame == i) & (face == 0))[0] for i in range(n)])
        pe = megatron_positional_encoding(384, n).numpy()
        np.testing.assert_allclose(sample.rgb, rgb[first].astype(np.float32) + pe, atol=1e-5)
        np.testing.assert_allclose(sample.depth, depth[first].astype(np.float32) + pe, atol=1e-5)
        assert sample.label == 0  # ours 1 = fake → Megatron's 0
    missing = megatron_sample(
        np.delete(np.arange(n), 9), np.zeros(n - 1), np.ones((n - 1, 2)), np.ones((n - 1, 2)), 0, n
    )
    assert missing is None  # a frame without a face in 0…N-1: Megatron drops the video


def test_depth_map_is_transformers_444_pipeline_uint8() -> None:
    """`normalise=max` is transformers 4.44.2's pipeline output: ·255/max truncated, at the crop's size."""
    rng = np.random.default_rng(11)
    for _ in range(50):
        h, w = int(rng.integers(4, 40)), int(rng.integers(4, 40))
        size = (int(rng.integers(10, 120)), int(rng.integers(10, 120)))
        predicted = torch.from_numpy(rng.gamma(2.0, rng.uniform(0.1, 20), (h, w)).astype(np.float32))
        if rng.random() < 0.3:
            predicted[rng.random((h, w)) < 0.3] = 0.0  # ReLU zeros: bicubic undershoot below zero
        ours = to_uint8_map(predicted, size, "max")
        theirs = transformers_444_depth(predicted[None], (size[1], size[0]))
        np.testing.assert_array_equal(ours, theirs)
        minmax = to_uint8_map(predicted, size, "minmax")
        assert ours.shape == minmax.shape == size


def test_leading_run_ends_at_the_first_faceless_frame_where_consecutive_restarts() -> None:
    """Megatron breaks at the first frame without a face (video_dataloader.py:171-172): no later run counts."""
    from faceshard.records import VideoInfo
    from faceshard.tasks.sampling import make_selector

    info = VideoInfo(fps=10, width=1, height=1, n_frames_container=None)
    leading, consecutive = make_selector("leading:3"), make_selector("consecutive:3")
    for selector in (leading, consecutive):
        selector.start(info)
        for index, faces in enumerate([1, 1, 0, 1, 1, 1]):
            if selector.want(index):
                selector.found(index, faces)
    assert leading.done and [i for i in range(6) if leading.accepted(i)] == [0, 1] and not leading.want(3)
    assert [i for i in range(6) if consecutive.accepted(i)] == [3, 4, 5]
