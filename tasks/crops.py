"""Face boxes → crops (SPEC §3): crop methods, stored formats and image encoding.

Crop methods (`CropConfig.method`), each a registry entry:

* `mintime` — MINTIME's `extract_crops.py`, edges and off-by-ones included (see `mintime_rect`). No resize.
* `margin:m` — the float box grown by m × its width left and right and m × its height top and bottom
  (DFDC: 0.3), outward to whole pixels, clipped. `margin:0` is the plain box (Megatron).
* `dlib_rect` — Megatron's cut of a dlib rectangle: `frame[top : top + height(), left : left + width()]`,
  whose `width()` is `right - left + 1` (dlib's corners are inclusive), with numpy's slice rules: the far
  edges clip to the frame, and a negative `top` or `left` counts from the far edge (usually an empty cut,
  which gives no face, as Megatron's pipeline then fails on that video).
* `align:S` — DeepfakeBench's `preprocess.py`: dlib's 68-point parts 37, 44, 30, 49, 55 → least-squares
  similarity transform onto the ArcFace 112-px template scaled to S and zoomed out by 1.3 →
  `cv2.warpAffine` to S × S; a crop in which dlib HOG (one upsampling) finds no face gives no face
  (DeepfakeBench drops that frame).
* `arcface:S` — the same warp on ArcFace's own points (eye centres, nose tip, mouth corners), no re-check.

Boxes that do not overlap the frame, or have no area, give no face (ranks stay contiguous).
`Face.crop` is always a copy: it never keeps the whole frame alive.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from faceshard.config import CropConfig
from faceshard.models.inputs import isotropic_square
from faceshard.records import Detections, Face, Frame

# (crop, box_in_crop) or None when the box gives no usable crop.
CropResult = tuple[np.ndarray, np.ndarray] | None
CropMethod = Callable[[np.ndarray, np.ndarray], CropResult]

# ArcFace's 5-point template for 112 × 112 crops (x, y): eyes, nose tip, mouth corners.
ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    np.float64,
)
ALIGN_ZOOM_OUT = 1.3


def _overlaps_frame(box: np.ndarray, width: int, height: int) -> bool:
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    return x2 > x1 and y2 > y1 and x2 > 0 and y2 > 0 and x1 < width and y1 < height


def _cut(rgb: np.ndarray, box: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> CropResult:
    if x1 <= x0 or y1 <= y0:
        return None
    crop = rgb[y0:y1, x0:x1].copy()
    return crop, (np.asarray(box[:4], np.float32) - np.array([x0, y0, x0, y0], np.float32))


def mintime_rect(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """MINTIME's square-padded crop of `box` as (x0, y0, x1, y1) in a width × height frame, end exclusive.

    The integer box (truncated toward zero) gets padding h // 3 and w // 3; the sides of that padded
    rectangle are measured after clipping only at the top/left edge, and the longer side's padding
    shrinks by half their difference (int). The rectangle is then cut the way numpy slices: the
    far edges clip to the frame, and a negative end counts from the far edge. Whatever difference is left
    between the sides is trimmed from both ends of the longer one by int(diff / 2) each; a difference of
    1 drops the first row, or the last column. The result can stay one pixel off square (an odd
    difference of 3 or more), as MINTIME's did; an empty rectangle has x1 == x0 or y1 == y0.
    """
    xmin, ymin, xmax, ymax = (int(v) for v in box[:4])
    p_w, p_h = (xmax - xmin) // 3, (ymax - ymin) // 3
    padded_h = ymax + p_h - max(ymin - p_h, 0)
    padded_w = xmax + p_w - max(xmin - p_w, 0)
    if padded_h > padded_w:
        p_h -= int((padded_h - padded_w) / 2)
    else:
        p_w -= int((padded_w - padded_h) / 2)
    y0, y1, _ = slice(max(ymin - p_h, 0), ymax + p_h).indices(height)
    x0, x1, _ = slice(max(xmin - p_w, 0), xmax + p_w).indices(width)
    y1, x1 = max(y1, y0), max(x1, x0)
    rows, cols = y1 - y0, x1 - x0
    if rows > cols:
        trim = int((rows - cols) / 2)
        y0, y1 = (y0 + trim, y1 - trim) if trim else (y0 + 1, y1)
    elif cols > rows:
        trim = int((cols - rows) / 2)
        x0, x1 = (x0 + trim, x1 - trim) if trim else (x0, x1 - 1)
    return x0, y0, x1, y1


def _mintime(rgb: np.ndarray, box: np.ndarray) -> CropResult:
    return _cut(rgb, box, *mintime_rect(box, rgb.shape[1], rgb.shape[0]))


def _margin(m: float) -> CropMethod:
    def crop(rgb: np.ndarray, box: np.ndarray) -> CropResult:
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        dx, dy = m * (x2 - x1), m * (y2 - y1)
        height, width = rgb.shape[:2]
        return _cut(
            rgb,
            box,
            max(math.floor(x1 - dx), 0),
            max(math.floor(y1 - dy), 0),
            min(math.ceil(x2 + dx), width),
            min(math.ceil(y2 + dy), height),
        )

    return crop


def _dlib_rect(rgb: np.ndarray, box: np.ndarray) -> CropResult:
    left, top, right, bottom = (int(v) for v in box[:4])
    y0, y1, _ = slice(top, bottom + 1).indices(rgb.shape[0])
    x0, x1, _ = slice(left, right + 1).indices(rgb.shape[1])
    return _cut(rgb, box, x0, y0, x1, y1)


def align_template(size: int, zoom_out: float = ALIGN_ZOOM_OUT) -> np.ndarray:
    """The ArcFace template scaled to `size` px and shrunk about the centre by `zoom_out` (more context)."""
    scaled = ARCFACE_112 * (size / 112.0)
    return (scaled - size / 2) / zoom_out + size / 2


def deepfakebench_template(size: int, zoom_out: float = ALIGN_ZOOM_OUT) -> np.ndarray:
    """`align_template` as DeepfakeBench computes it: float32, in its order of operations.

    The same points to ~1e-5 px; its crops are bit-identical to ours only with these exact floats.
    """
    dst = (ARCFACE_112 - [8.0, 0.0]).astype(np.float32)  # the template before its x shift of 8
    dst[:, 0] += 8.0
    dst[:, 0] = dst[:, 0] * size / 112
    dst[:, 1] = dst[:, 1] * size / 112
    margin = size * (zoom_out - 1) / 2.0
    dst += margin
    dst *= size / (size + 2 * margin)
    return dst


def deepfakebench_transform(src: np.ndarray, size: int) -> np.ndarray:
    """2 × 3 similarity from float32 points onto `deepfakebench_template` (scikit-image's estimate, as it uses)."""
    from skimage.transform import SimilarityTransform

    src, dst = np.asarray(src, np.float32), deepfakebench_template(size)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        return SimilarityTransform.from_estimate(src, dst).params[:2]
    transform = SimilarityTransform()
    transform.estimate(src, dst)
    return transform.params[:2]


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2 × 3 least-squares similarity (rotation, uniform scale, shift) mapping src points onto dst."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    x, y = src[:, 0], src[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    # u = a·x − b·y + tx ; v = b·x + a·y + ty
    design = np.concatenate([np.stack([x, -y, ones, zeros], 1), np.stack([y, x, zeros, ones], 1)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]], np.float64)


def _align(size: int, deepfakebench: bool, predictor: Path | None = None) -> CropMethod:
    """`align:S` (DeepfakeBench's points and drop check, on `predictor`: default dlib's 68-point model)
    or `arcface:S` (ArcFace's points on the 68-point model)."""
    template = align_template(size)

    def crop(rgb: np.ndarray, box: np.ndarray) -> CropResult:
        from faceshard.models import landmarks

        if deepfakebench:
            matrix = deepfakebench_transform(landmarks.deepfakebench_points(rgb, box, predictor), size)
        else:
            matrix = similarity_transform(landmarks.five_points(rgb, box), template)
        warped = cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR)
        # DeepfakeBench re-detects on the crop as it saves it (BGR) and drops the frame without a face.
        bgr = cv2.cvtColor(warped, cv2.COLOR_RGB2BGR) if deepfakebench else None
        if bgr is not None and landmarks.crop_landmarks(bgr, predictor) is None:
            return None
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        corners = np.array([[x1, y1, 1], [x2, y1, 1], [x1, y2, 1], [x2, y2, 1]]) @ matrix.T
        box_in_crop = np.concatenate([corners.min(axis=0), corners.max(axis=0)]).astype(np.float32)
        return np.ascontiguousarray(warped), box_in_crop

    return crop


# Each method from its `:arg` and the crop settings (`align` reads `landmarks_model`).
CROP_METHODS: dict[str, Callable[[str | None, CropConfig], CropMethod]] = {
    "mintime": lambda arg, cfg: _mintime,
    "margin": lambda arg, cfg: _margin(float(arg or 0.0)),
    "align": lambda arg, cfg: _align(
        int(arg or 256), True, Path(cfg.landmarks_model).expanduser() if cfg.landmarks_model else None
    ),
    "arcface": lambda arg, cfg: _align(int(arg or 256), deepfakebench=False),
    "dlib_rect": lambda arg, cfg: _dlib_rect,
}


def _parse(spec: str, registry: dict[str, Callable[..., object]], what: str, *settings: object) -> object:
    name, sep, arg = spec.partition(":")
    if name not in registry:
        raise ValueError(f"unknown {what} {spec!r}; choose one of {', '.join(registry)}")
    return registry[name](arg if sep else None, *settings)


class Cropper:
    """`cropper(frame, dets) -> list[Face]` with crop, box_in_crop, frame size and rank filled."""

    def __init__(self, cfg: CropConfig) -> None:
        self.cfg = cfg
        self._crop: CropMethod = _parse(cfg.method, CROP_METHODS, "crop method", cfg)  # type: ignore[assignment]
        # dlib_rect decides itself, by Megatron's slicing (inclusive corners: a 1-px box is a face there)
        self._overlap_check = cfg.method != "dlib_rect"

    def __call__(self, frame: Frame, dets: Detections) -> list[Face]:
        height, width = frame.rgb.shape[:2]
        faces: list[Face] = []
        for box, score in zip(dets.boxes, dets.scores, strict=True):
            if self._overlap_check and not _overlaps_frame(box, width, height):
                continue
            result = self._crop(frame.rgb, box)
            if result is None:
                continue
            crop, box_in_crop = result
            faces.append(
                Face(
                    frame=frame.index,
                    face=len(faces),
                    box=np.asarray(box, np.float32).copy(),
                    score=float(score),
                    frame_width=width,
                    frame_height=height,
                    crop=crop,
                    box_in_crop=box_in_crop,
                )
            )
        return faces


def _pad_or_centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    """size × size without resampling: zero-pad each short axis centred, centre-crop each long axis."""
    out = np.zeros((size, size, *img.shape[2:]), img.dtype)
    h, w = img.shape[:2]
    src_y, src_x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    dst_y, dst_x = max(0, (size - h) // 2), max(0, (size - w) // 2)
    ch, cw = min(h, size), min(w, size)
    out[dst_y : dst_y + ch, dst_x : dst_x + cw] = img[src_y : src_y + ch, src_x : src_x + cw]
    return out


STORE_FORMATS: dict[str, Callable[[str | None], Callable[[np.ndarray], np.ndarray]]] = {
    "native": lambda arg: lambda img: img,
    "isotropic": lambda arg: lambda img: isotropic_square(img, int(arg or 224)),
    # Fixed S × S stored images: zero-pad, no resize; a crop larger than S is centre-cropped to S (Megatron
    # never cut a face: what its embedder saw is `embed.input=pad:max`).
    "pad": lambda arg: lambda img: _pad_or_centre_crop(img, int(arg or 224)),
}


def store_format(img: np.ndarray, spec: str) -> np.ndarray:
    """The crop as stored: `native` | `isotropic:S` (resize longest side, pad square) | `pad:S`."""
    fmt: Callable[[np.ndarray], np.ndarray] = _parse(spec, STORE_FORMATS, "store format")  # type: ignore[assignment]
    return fmt(img)


def encode_image(img: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """PNG or JPEG bytes of an RGB (H, W, 3) or single-channel (H, W) uint8 image."""
    fmt = fmt.lower()
    if fmt not in ("png", "jpeg", "jpg"):
        raise ValueError(f"unknown image format {fmt!r}; use png or jpeg")
    pixels = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt != "png" else []
    ok, buffer = cv2.imencode(".png" if fmt == "png" else ".jpg", np.ascontiguousarray(pixels), params)
    if not ok:
        raise ValueError(f"cv2 could not encode a {img.shape} {img.dtype} image as {fmt}")
    return buffer.tobytes()


class CropEncoder:
    """Stage: `Face.crop_bytes` = the crop in the stored format, encoded (only when `cfg.save`)."""

    def __init__(self, cfg: CropConfig) -> None:
        self.cfg = cfg
        self._store: Callable[[np.ndarray], np.ndarray] = _parse(cfg.store, STORE_FORMATS, "store format")  # type: ignore[assignment]

    def __call__(self, faces: list[Face]) -> list[Face]:
        if not self.cfg.save:
            return faces
        for face in faces:
            if face.crop is not None:
                stored = self._store(face.crop)
                face.crop_bytes = encode_image(stored, self.cfg.format, self.cfg.jpeg_quality)
        return faces
