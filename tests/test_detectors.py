"""models/detectors.py against direct facenet-pytorch MTCNN and dlib HOG calls on real photos."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import dlib
import facenet_pytorch
import numpy as np
import pytest
import skimage.data
import torch
from matplotlib import cbook
from PIL import Image

from faceshard.config import DetectConfig
from faceshard.models.detectors import auto_detect_scale, build_detector, resolve_device
from faceshard.models.registry import combine_fingerprints

THRESHOLDS = [0.85, 0.95, 0.95]


def grace_hopper() -> np.ndarray:
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return np.asarray(Image.open(handle).convert("RGB"))


def side_by_side(height: int, grace_width: int, astronaut_side: int) -> np.ndarray:
    """Two real faces of different sizes: Grace Hopper (large, left) and the astronaut (small, top right)."""
    canvas = np.zeros((height, grace_width + astronaut_side, 3), np.uint8)
    canvas[:, :grace_width] = cv2.resize(grace_hopper(), (grace_width, height), interpolation=cv2.INTER_AREA)
    astronaut = cv2.resize(skimage.data.astronaut(), (astronaut_side,) * 2, interpolation=cv2.INTER_AREA)
    canvas[:astronaut_side, grace_width:] = astronaut
    return canvas


@pytest.fixture(scope="module")
def collage() -> np.ndarray:
    return side_by_side(300, 256, 144)


@pytest.fixture(scope="module")
def small_face() -> np.ndarray:
    return cv2.resize(skimage.data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def direct_mtcnn() -> facenet_pytorch.MTCNN:
    return facenet_pytorch.MTCNN(keep_all=True, thresholds=THRESHOLDS, min_face_size=20, factor=0.709)


def by_area(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64)
    return boxes[np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")]


def areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def test_mtcnn_full_scale_matches_facenet_direct(small_face: np.ndarray, direct_mtcnn) -> None:
    detector = build_detector(DetectConfig(detect_scale=1.0), "cpu")
    ours = detector([small_face])[0]
    boxes, probs = direct_mtcnn.detect(Image.fromarray(small_face))
    assert boxes is not None and len(ours) == len(boxes) >= 1
    np.testing.assert_allclose(ours.boxes, by_area(boxes), atol=0.05)
    assert ours.boxes.dtype == np.float32 and ours.scores.dtype == np.float32
    np.testing.assert_allclose(np.sort(ours.scores), np.sort(probs.astype(np.float32)), atol=1e-5)


def test_mtcnn_half_scale_matches_facenet_on_a_pil_resized_frame(collage: np.ndarray, direct_mtcnn) -> None:
    detector = build_detector(DetectConfig(detect_scale=0.5), "cpu")
    ours = detector([collage])[0]
    boxes, _ = direct_mtcnn.detect(Image.fromarray(collage).resize((200, 150)))
    assert len(ours) == len(boxes) == 2
    np.testing.assert_allclose(ours.boxes, by_area(boxes) * 2.0, atol=0.05)
    assert areas(ours.boxes)[0] > areas(ours.boxes)[1]  # largest first: Grace Hopper, on the left
    assert ours.boxes[0, 0] < 256 <= ours.boxes[1, 0]


def test_mtcnn_batches_mixed_sizes_like_single_calls(collage: np.ndarray) -> None:
    detector = build_detector(DetectConfig(detect_scale=0.5, batch_size=2), "cpu")
    face = cv2.resize(skimage.data.astronaut(), (192, 192), interpolation=cv2.INTER_AREA)
    frames = [face, collage, face[:, ::-1].copy(), (face * 0.8).astype(np.uint8)]
    batched = detector(frames)
    singles = [detector([frame])[0] for frame in frames]
    assert [len(d) for d in batched] == [len(d) for d in singles] == [1, 2, 1, 1]
    for got, want in zip(batched, singles, strict=True):
        np.testing.assert_allclose(got.boxes, want.boxes, atol=0.05)
    assert abs(batched[2].boxes[0, 0] - batched[0].boxes[0, 0]) > 1  # results stay with their frame


def test_mtcnn_keep_policies_and_min_score(collage: np.ndarray) -> None:
    everything = build_detector(DetectConfig(detect_scale=0.5, keep="all"), "cpu")([collage])[0]
    largest = build_detector(DetectConfig(detect_scale=0.5, keep="largest"), "cpu")([collage])[0]
    first = build_detector(DetectConfig(detect_scale=0.5, keep="first"), "cpu")([collage])[0]
    assert len(everything) == 2 and len(largest) == len(first) == 1
    np.testing.assert_array_equal(largest.boxes[0], everything.boxes[np.argmax(areas(everything.boxes))])
    np.testing.assert_array_equal(first.boxes[0], everything.boxes[np.argmax(everything.scores)])
    between = float(everything.scores.min() + everything.scores.max()) / 2
    strict = build_detector(DetectConfig(detect_scale=0.5, min_score=between), "cpu")([collage])[0]
    assert len(strict) == 1 and strict.scores[0] == everything.scores.max()


def test_mtcnn_no_face_and_tiny_frames_give_empty_detections() -> None:
    detector = build_detector(DetectConfig(detect_scale=0.5), "cpu")
    coffee = cv2.resize(skimage.data.coffee(), (200, 150))
    results = detector([coffee, np.zeros((16, 16, 3), np.uint8)])
    for dets in results:
        assert len(dets) == 0 and dets.boxes.shape == (0, 4) and dets.boxes.dtype == np.float32


def test_auto_scale_rule_and_use(small_face: np.ndarray) -> None:
    assert [auto_detect_scale(s, 100) for s in (299, 300, 1000, 1001, 1900, 1920)] == [
        2,
        1,
        1,
        0.5,
        0.5,
        0.33,
    ]
    assert auto_detect_scale(720, 1280) == 0.5  # the longer side, portrait or landscape
    auto = build_detector(DetectConfig(detect_scale="auto"), "cpu")([small_face])[0]
    doubled = build_detector(DetectConfig(detect_scale=2.0), "cpu")([small_face])[0]
    assert len(auto) >= 1
    np.testing.assert_allclose(auto.boxes, doubled.boxes)


def test_mtcnn_fingerprint_hashes_the_shipped_weights() -> None:
    data = Path(facenet_pytorch.__file__).parent / "data"
    digests = [
        "sha256:" + hashlib.sha256((data / f"{n}.pt").read_bytes()).hexdigest()
        for n in ("pnet", "rnet", "onet")
    ]
    detector = build_detector(DetectConfig(), "cpu")
    assert detector.weights.name == "mtcnn" and not detector.weights.random
    assert detector.fingerprint == detector.weights.fingerprint == combine_fingerprints(digests)


@pytest.mark.parametrize("upsample", [0, 1])
def test_dlib_matches_direct_hog(collage: np.ndarray, upsample: int) -> None:
    direct = dlib.get_frontal_face_detector()(collage, upsample)
    want = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in direct], np.float64)
    ours = build_detector(DetectConfig(backend="dlib", upsample=upsample), "cpu")([collage])[0]
    assert len(ours) == len(want) >= 1
    np.testing.assert_array_equal(ours.boxes, by_area(want))


def test_dlib_keep_first_is_dlibs_first_and_largest_is_largest() -> None:
    collage = side_by_side(600, 512, 256)
    direct = dlib.get_frontal_face_detector()(collage, 1)
    assert len(direct) == 2  # dlib lists the small astronaut first (higher score)
    dlib_first = [direct[0].left(), direct[0].top(), direct[0].right(), direct[0].bottom()]
    first = build_detector(DetectConfig(backend="dlib", upsample=1, keep="first"), "cpu")([collage])[0]
    largest = build_detector(DetectConfig(backend="dlib", upsample=1, keep="largest"), "cpu")([collage])[0]
    np.testing.assert_array_equal(first.boxes[0], dlib_first)
    assert areas(largest.boxes)[0] > areas(first.boxes)[0]


def test_dlib_accepts_non_contiguous_frames_and_has_a_fingerprint(collage: np.ndarray) -> None:
    detector = build_detector(DetectConfig(backend="dlib", upsample=0), "cuda")
    mirrored = collage[:, ::-1]  # a view: dlib itself would refuse it
    assert len(detector([mirrored])[0]) >= 1
    assert detector.fingerprint == detector.weights.fingerprint == f"dlib-hog-{dlib.__version__}"


def test_device_resolution() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        assert resolve_device("cuda") == "cpu"
        assert build_detector(DetectConfig(), "cuda").device == "cpu"
