"""What a model is shown of a face crop: the canvas each pipeline built before its network (SPEC §3, §7).

The embedder (and the stored crop format) take one of these specs:

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

import cv2
import numpy as np

INPUT_PATTERN = r"timm|isotropic:[1-9][0-9]*|pad:([1-9][0-9]*|max)"


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


def isotropic_square(img: np.ndarray, size: int) -> np.ndarray:
    """`isotropic:S`: longest side → S, then zero-padded centred to S × S."""
    return pad_centred(isotropic_resize(img, size), size, size)


def check_input(spec: str) -> str:
    """`spec` if it names a known model input, else ValueError listing the choices."""
    if not re.fullmatch(INPUT_PATTERN, spec):
        raise ValueError(f"unknown model input {spec!r}; use timm | isotropic:S | pad:S | pad:max")
    return spec


def prepare(images: list[np.ndarray], spec: str) -> list[np.ndarray]:
    """The canvases a model sees for `images` under `spec` (uint8, channels last); `timm` is left alone."""
    name, _, arg = check_input(spec).partition(":")
    if name == "timm":
        return list(images)
    if name == "isotropic":
        return [isotropic_square(img, int(arg)) for img in images]
    if arg == "max":
        if not images:
            return []
        height = max(img.shape[0] for img in images)
        width = max(img.shape[1] for img in images)
        return [pad_centred(img, height, width) for img in images]
    return [pad_centred(img, int(arg), int(arg)) for img in images]
