"""What a model is shown of a face crop: the canvas each pipeline built before its network (SPEC §3, §7).

The embedder and the depth model take one of these specs (`embed.input`, `depth.input`; the stored
crop format `isotropic:S` is the same resize):

* `native` — the crop as it is (the depth model's processor then resizes it; Megatron's depth input).
* `timm` — the model's own pretrained eval transform (resize, then centre crop: EfficientNet-B0 cuts
  12.5 % of each side). Only where a preset asks for it.
* `isotropic:S` — MINTIME's loader: the longest side becomes S (the other side `int()`-truncated, so a
  100 × 99 crop at 224 has 221 content rows), INTER_AREA when shrinking, INTER_CUBIC when enlarging, then
  zero-padded centred to S × S (top/left get the smaller half).
* `pad:S` — zero-padded centred to at least S × S without resampling; a side longer than S is kept
  whole (the canvas grows), never cut: Megatron never resized or cut a face.
* `pad:max` — Megatron exactly: every image of a call is zero-padded centred to the largest height and
  the largest width among them. Megatron padded a video's N consecutive faces to the largest of them; the
  pipeline hands the embedder a `consecutive:N` run in one call, so the canvas is the same.

Normalisation is never part of the canvas: the model's own mean/std is applied afterwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np

from faceshard.config import MODEL_INPUT_PATTERN


def isotropic_resize(img: np.ndarray, size: int) -> np.ndarray:
    """Longest side → `size`, aspect kept, the other side truncated to an integer (MINTIME's loader)."""
    height, width = img.shape[:2]
    if max(height, width) == size:
        return img
    # the short side is side · scale truncated, in that order, so the float matches MINTIME's (a square
    # crop's "short" side is its width, which can truncate to S − 1)
    if width > height:
        scale = size / width
        new_w, new_h = size, max(1, int(height * scale))
    else:
        scale = size / height
        new_w, new_h = max(1, int(width * scale)), size
    interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    return cv2.resize(np.ascontiguousarray(img), (new_w, new_h), interpolation=interpolation)


def pad_centred(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """`img` on a zero canvas of at least height × width, centred (top/left get the smaller half)."""
    h, w = img.shape[:2]
    height, width = max(height, h), max(width, w)
    if (h, w) == (height, width):
        return img
    out = np.zeros((height, width, *img.shape[2:]), img.dtype)
    top, left = (height - h) // 2, (width - w) // 2
    out[top : top + h, left : left + w] = img
    return out


def check_input(spec: str) -> str:
    """`spec` if it names a known model input, else ValueError listing the choices."""
    if not re.fullmatch(MODEL_INPUT_PATTERN, spec):
        raise ValueError(f"unknown model input {spec!r}; use native | timm | isotropic:S | pad:S | pad:max")
    return spec


@dataclass(frozen=True)
class Placed:
    """An image on its canvas, and where it sits there (top, left, height, width), for mapping back."""

    canvas: np.ndarray
    content: tuple[int, int, int, int]


def place(images: list[np.ndarray], spec: str) -> list[Placed]:
    """The canvases a model sees for `images` under `spec` (uint8, channels last).

    `native` and `timm` leave the images as they are (timm's transform runs later, on tensors).
    """
    name, _, arg = check_input(spec).partition(":")
    if name in ("native", "timm") or not images:
        return [Placed(img, (0, 0, *img.shape[:2])) for img in images]
    contents = [isotropic_resize(img, int(arg)) for img in images] if name == "isotropic" else list(images)
    if arg == "max":
        height, width = max(c.shape[0] for c in contents), max(c.shape[1] for c in contents)
    else:
        height = width = int(arg)
    placed = []
    for content in contents:
        canvas = pad_centred(content, height, width)
        h, w = content.shape[:2]
        placed.append(Placed(canvas, ((canvas.shape[0] - h) // 2, (canvas.shape[1] - w) // 2, h, w)))
    return placed


def isotropic_square(img: np.ndarray, size: int) -> np.ndarray:
    """`isotropic:S` for one image: longest side → S, then zero-padded centred to S × S."""
    return place([img], f"isotropic:{size}")[0].canvas


def mintime_sequence(slots: list[np.ndarray | None], size: int = 224) -> list[np.ndarray]:
    """The S × S canvases MINTIME's val transform makes of one sample's slots, taken together.

    Its loader hands the whole sequence to one albumentations Compose, and its pinned albumentations
    0.5.2 computes PadIfNeeded's amounts from the first image only and applies them to every image;
    Resize(S, S) then squashes any image that came out of that padding other than S × S. So a slot's
    canvas depends on slot 0's shape: a per-face cache (`isotropic:S`) holds it only when both have the
    same isotropic shape. `None` is a padding slot (MINTIME pads with a zero S × S image). Feeding these
    canvases to an `isotropic:S` embedder (they pass through it unchanged) gives MINTIME's tokens.
    """
    contents = [
        np.zeros((size, size, 3), np.uint8) if s is None else isotropic_resize(s, size) for s in slots
    ]
    if not contents:
        return []
    rows, cols = contents[0].shape[:2]  # the first image's amounts, for all
    top, left = (size - rows) // 2 if rows < size else 0, (size - cols) // 2 if cols < size else 0
    bottom, right = max(size - rows, 0) - top, max(size - cols, 0) - left
    canvases = []
    for content in contents:
        padded = cv2.copyMakeBorder(content, top, bottom, left, right, cv2.BORDER_CONSTANT, value=0)
        if padded.shape[:2] != (size, size):
            padded = cv2.resize(padded, (size, size), interpolation=cv2.INTER_LINEAR)
        canvases.append(padded)
    return canvases
