"""tasks/crops.py and models/landmarks.py: hand-computed crop rectangles, alignment, formats, encoding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
from oracles import mintime_crop, mintime_val_transform

from faceshard.config import CropConfig, DetectConfig
from faceshard.models.detectors import build_detector
from faceshard.models.landmarks import five_points, predictor_path
from faceshard.records import Detections, Frame
from faceshard.tasks.crops import (
    CropEncoder,
    Cropper,
    align_template,
    encode_image,
    mintime_rect,
    similarity_transform,
    store_format,
)
from faceshard.tasks.size import SizeStage


@pytest.fixture(scope="module")
def frame() -> Frame:
    """640 × 480 with a distinct value per pixel, so a crop's position can be read back from its pixels."""
    ys, xs = np.mgrid[0:480, 0:640]
    rgb = np.stack([xs % 256, ys % 256, (xs // 256) * 16 + (ys // 256)], axis=-1).astype(np.uint8)
    return Frame(index=7, rgb=np.ascontiguousarray(rgb))


def dets(*boxes: tuple[float, float, float, float]) -> Detections:
    scores = np.linspace(0.99, 0.9, len(boxes), dtype=np.float32)
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), scores)


def decode(data: bytes, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


@pytest.mark.parametrize(
    ("box", "rect"),
    [
        # w=90, h=120: p_w=30, p_h=40; padded h = 210 − 10 = 200, w = 220 − 70 = 150 → p_h −= int(50/2)
        # → 15 → y 35..185, x 70..220: 150 × 150
        ((100, 50, 190, 170), (70, 35, 220, 185)),
        # w=120, h=60: p_h=20, p_w=40; padded h 100 < w 200 → p_w −= 50 → −10: x 210..310, y 80..180
        ((200, 100, 320, 160), (210, 80, 310, 180)),
        # one column more: padded h 200, w 151 → p_h = 40 − 24 = 16 → 152 rows × 151 cols → drop row 34
        ((100, 50, 191, 170), (70, 35, 221, 186)),
        # int() truncates toward zero: (−20, 10, 60, 90), p=26; padded h 116 (clipped top: 0), w 86 →
        # p_h = 26 − 15 = 11 → y 0..101, x 0..86 → 101 − 86 = 15 → int(15/2)=7 off both ends: 87 × 86
        ((-20.7, 10.2, 60.9, 90.5), (0, 7, 86, 94)),
        # bottom-right: p_w=20, p_h=33 − int(66/2)=0 → y 400..480 (numpy clips), x 570..640 → trim 5 + 5
        ((590, 400, 650, 500), (570, 405, 640, 475)),
    ],
)
def test_mintime_worked_examples(
    frame: Frame, box: tuple[float, ...], rect: tuple[int, int, int, int]
) -> None:
    assert mintime_rect(np.array(box, np.float32), 640, 480) == rect
    (face,) = Cropper(CropConfig(method="mintime"))(frame, dets(box))
    x0, y0, x1, y1 = rect
    np.testing.assert_array_equal(face.crop, frame.rgb[y0:y1, x0:x1])
    assert abs(face.crop.shape[0] - face.crop.shape[1]) <= 1  # (near) square, never resized
    np.testing.assert_allclose(face.box_in_crop, np.array(box, np.float32) - [x0, y0, x0, y0], atol=1e-4)
    assert (face.frame, face.face, face.frame_width, face.frame_height) == (7, 0, 640, 480)
    assert not np.shares_memory(face.crop, frame.rgb)  # a crop never keeps the frame alive


@pytest.mark.parametrize(
    ("method", "box", "rect"),
    [
        ("margin:0.3", (100, 100, 200, 150), (70, 85, 230, 165)),  # 0.3·100 left/right, 0.3·50 top/bottom
        ("margin:0.0", (10, 20, 50, 60), (10, 20, 50, 60)),  # Megatron: the plain dlib box
        ("margin:0.3", (0.5, 0, 100, 100), (0, 0, 130, 130)),  # clipped at the top-left corner
        ("margin:0.1", (10.2, 20.7, 49.6, 59.1), (6, 16, 54, 63)),  # outward to whole pixels
    ],
)
def test_margin_worked_examples(
    frame: Frame, method: str, box: tuple[float, ...], rect: tuple[int, ...]
) -> None:
    (face,) = Cropper(CropConfig(method=method))(frame, dets(box))
    x0, y0, x1, y1 = rect
    np.testing.assert_array_equal(face.crop, frame.rgb[y0:y1, x0:x1])
    np.testing.assert_allclose(face.box_in_crop, np.array(box, np.float32) - [x0, y0, x0, y0], atol=1e-4)


def test_degenerate_boxes_are_skipped_and_ranks_stay_contiguous(frame: Frame) -> None:
    outside, good, flat, other = (
        (700, 10, 800, 100),
        (100, 50, 190, 170),
        (10, 10, 10, 50),
        (300, 300, 360, 360),
    )
    faces = Cropper(CropConfig(method="mintime"))(frame, dets(outside, good, flat, other))
    assert [f.face for f in faces] == [0, 1]
    np.testing.assert_array_equal(faces[0].box, good)
    np.testing.assert_array_equal(faces[1].box, other)
    assert faces[1].score == pytest.approx(0.9)
    assert Cropper(CropConfig(method="margin:0.3"))(frame, Detections.empty()) == []


@pytest.fixture(scope="module")
def astronaut_face() -> tuple[np.ndarray, np.ndarray]:
    rgb = skimage.data.astronaut()
    detections = build_detector(DetectConfig(backend="dlib", upsample=0, keep="largest"), "cpu")([rgb])[0]
    return rgb, detections.boxes[0]


def test_five_points_are_eyes_nose_mouth_in_order(astronaut_face: tuple[np.ndarray, np.ndarray]) -> None:
    rgb, box = astronaut_face
    assert predictor_path().name == "shape_predictor_68_face_landmarks.dat"
    points = five_points(rgb, box)
    assert points.shape == (5, 2) and points.dtype == np.float32
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    assert np.all((points >= box[:2]) & (points <= box[2:]))


def test_align_puts_the_landmarks_on_the_scaled_arcface_template(
    astronaut_face: tuple[np.ndarray, np.ndarray],
) -> None:
    rgb, box = astronaut_face
    detections = Detections(box[None], np.ones(1, np.float32))
    (face,) = Cropper(CropConfig(method="arcface:256"))(Frame(0, rgb), detections)
    assert face.crop.shape == (256, 256, 3) and face.crop.flags.c_contiguous
    # Landmarks found again on the aligned crop sit near the template (a smile is not the template's
    # neutral mouth: the least-squares fit leaves a few pixels there), and the eyes are level.
    template = align_template(256)
    again = five_points(face.crop, face.box_in_crop)
    np.testing.assert_allclose(again, template, atol=12)
    np.testing.assert_allclose(again[:2], template[:2], atol=6)
    assert abs(again[0, 1] - again[1, 1]) < 2
    eye_distance = (73.5318 - 38.2946) * 256 / 112 / 1.3  # ArcFace's, scaled to 256 and zoomed out
    assert template[1, 0] - template[0, 0] == pytest.approx(eye_distance)
    # box_in_crop encloses the mapped detection box around the template's centre
    x1, y1, x2, y2 = face.box_in_crop
    assert x1 < template[0, 0] < template[1, 0] < x2 and y1 < template[0, 1] < template[3, 1] < y2


def test_similarity_transform_recovers_a_known_similarity() -> None:
    angle, scale, shift = np.deg2rad(20), 1.7, np.array([12.0, -5.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.array([[30, 40], [80, 42], [55, 70], [35, 95], [75, 96]], np.float64)
    matrix = similarity_transform(src, src @ rotation.T + shift)
    np.testing.assert_allclose(matrix, np.hstack([rotation, shift[:, None]]), atol=1e-9)


def test_store_formats() -> None:
    crop = np.full((100, 50, 3), 200, np.uint8)
    assert store_format(crop, "native") is crop
    iso = store_format(crop, "isotropic:224")
    assert iso.shape == (224, 224, 3)
    assert np.all(iso[:, 56:168] == 200) and not iso[:, :56].any() and not iso[:, 168:].any()
    padded = store_format(crop, "pad:224")
    assert padded.shape == (224, 224, 3)
    np.testing.assert_array_equal(padded[62:162, 87:137], crop)
    assert padded.sum() == crop.sum()  # zero padding only, no resampling
    ramp = np.arange(100, dtype=np.uint8)[:, None, None].repeat(50, 1).repeat(3, 2)
    cut = store_format(ramp, "pad:64")  # taller than 64: centre rows 18..82 kept, width padded 7..57
    np.testing.assert_array_equal(cut[:, 7:57], ramp[18:82])
    assert not cut[:, :7].any() and not cut[:, 57:].any()
    with pytest.raises(ValueError, match="store format"):
        store_format(crop, "stretch:10")


def test_encode_image_round_trips_in_rgb() -> None:
    rgb = skimage.data.astronaut()[:96, :128]
    png = encode_image(rgb, "png")
    assert png[:4] == b"\x89PNG"
    np.testing.assert_array_equal(
        cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1], rgb
    )
    good, poor = encode_image(rgb, "jpeg", 95), encode_image(rgb, "jpeg", 10)
    assert good[:2] == b"\xff\xd8" and len(poor) < len(good)
    decoded = decode(good)[..., ::-1].astype(int)
    assert np.abs(decoded - rgb).mean() < 4 < np.abs(decoded - rgb[..., ::-1]).mean()
    gray = rgb[..., 0].copy()
    assert np.array_equal(
        cv2.imdecode(np.frombuffer(encode_image(gray), np.uint8), cv2.IMREAD_UNCHANGED), gray
    )
    with pytest.raises(ValueError, match="format"):
        encode_image(rgb, "gif")


def test_crop_encoder_stores_the_formatted_crop_only_when_asked(frame: Frame) -> None:
    faces = Cropper(CropConfig(method="mintime"))(frame, dets((100, 50, 190, 170)))
    assert CropEncoder(CropConfig(save=False))(faces)[0].crop_bytes is None
    CropEncoder(CropConfig(save=True, store="isotropic:64", format="jpeg", jpeg_quality=90))(faces)
    stored = decode(faces[0].crop_bytes)
    assert stored.shape == (64, 64, 3)
    assert faces[0].crop.shape == (150, 150, 3)  # the native crop stays for later stages


def random_boxes(rng: np.random.Generator, width: int, height: int, n: int) -> np.ndarray:
    """Face-like float boxes anywhere in and around the frame, a quarter pinned across each edge."""
    side = rng.uniform(4, 0.7 * min(width, height), n)
    aspect = rng.uniform(0.5, 2.0, n)
    w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
    cx = rng.uniform(-0.1 * width, 1.1 * width, n)
    cy = rng.uniform(-0.1 * height, 1.1 * height, n)
    edge = rng.integers(0, 8, n)  # 0..3: straddle left/top/right/bottom; 4..7: anywhere
    straddle = rng.uniform(-0.45, 0.45, n)
    cx = np.where(edge == 0, straddle * w, np.where(edge == 2, width + straddle * w, cx))
    cy = np.where(edge == 1, straddle * h, np.where(edge == 3, height + straddle * h, cy))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)


@pytest.mark.parametrize(("width", "height"), [(1920, 1080), (640, 480), (320, 568)])
def test_mintime_rect_matches_mintime_on_random_boxes_across_every_edge(width: int, height: int) -> None:
    rng = np.random.default_rng(width + height)
    index = np.arange(width * height, dtype=np.int64).reshape(height, width)  # each pixel names itself
    boxes = random_boxes(rng, width, height, 4000)
    crossings = {
        "left": int((boxes[:, 0] < 0).sum()),
        "top": int((boxes[:, 1] < 0).sum()),
        "right": int((boxes[:, 2] > width).sum()),
        "bottom": int((boxes[:, 3] > height).sum()),
    }
    assert min(crossings.values()) > 400, crossings
    for box in boxes:
        expected = mintime_crop(index, box)
        x0, y0, x1, y1 = mintime_rect(box, width, height)
        if expected.size == 0:
            assert x1 <= x0 or y1 <= y0, box
            continue
        top_left = int(expected[0, 0])
        assert (x0, y0) == (top_left % width, top_left // width), box
        assert (y1 - y0, x1 - x0) == expected.shape, box


def test_mintime_crops_and_sizes_follow_mintime_in_a_1080p_frame() -> None:
    """The crop's pixels, area_ratio and size_bucket are MINTIME's, issue #12's edge case included."""
    width, height = 1920, 1080
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([xs % 256, ys % 256, (xs // 256) * 16 + (ys // 256)], axis=-1).astype(np.uint8)
    frame = Frame(0, rgb)
    boxes = np.vstack(
        [[[282.8, -17.6, 449.1, 200.5]], random_boxes(np.random.default_rng(5), width, height, 300)]
    )
    cropper, size = Cropper(CropConfig(method="mintime")), SizeStage()
    for box in boxes:
        expected = mintime_crop(rgb, box)
        faces = size(cropper(frame, dets(tuple(box))))
        if not faces:  # dropped: only a box off the frame, whose MINTIME crop is empty or meaningless
            assert expected.size == 0 or not (
                box[2] > 0 and box[3] > 0 and box[0] < width and box[1] < height
            )
            continue
        (face,) = faces
        np.testing.assert_array_equal(face.crop, expected)
        ratio = int(100 * expected.shape[0] * expected.shape[1] / (width * height))
        assert face.area_ratio == ratio
        assert face.size_bucket == next(i + 1 for i, top in enumerate(range(5, 101, 5)) if ratio <= top)
    first = size(cropper(frame, dets(tuple(boxes[0]))))[0]
    assert first.crop.shape == (272, 272, 3)  # issue #12: MINTIME's 272 × 272 at (229, 0)
    np.testing.assert_array_equal(first.crop, rgb[0:272, 229:501])


@pytest.mark.parametrize(
    ("height", "width"), [(99, 100), (100, 99), (107, 107), (300, 200), (50, 223), (224, 224), (3, 3)]
)
def test_isotropic_truncates_like_mintime(height: int, width: int) -> None:
    rng = np.random.default_rng(height * width)
    crop = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    for size in (224, 112):
        np.testing.assert_array_equal(
            store_format(crop, f"isotropic:{size}"), mintime_val_transform(crop, size)
        )
    content_rows = np.flatnonzero(
        store_format(np.full((99, 100, 3), 255, np.uint8), "isotropic:224").any(axis=(1, 2))
    )
    assert len(content_rows) == 221  # issue #12: 99 · 2.24 = 221.76 → 221 rows, not 222
