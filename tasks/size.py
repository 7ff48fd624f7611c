"""MINTIME's face-size feature (SPEC §4): how much of the frame a face crop covers, as 20 buckets.

ratio = int(100 · crop_h · crop_w / (frame_W · frame_H)) with the crop's own size (before any stored
format) and the original frame size; bucket = 1 + index of the first range of (0,5), (6,10), …,
(96,100) that holds the ratio, so 1…20 (0 is reserved for padding). MINTIME's predict script doubled
the ratio: not copied.
"""

from __future__ import annotations

from bisect import bisect_left
from numbers import Integral

from faceshard.records import Face

# Upper ends of the ranges (0,5), (6,10), …, (96,100).
_BUCKET_UPPER = tuple(range(5, 101, 5))


def size_bucket(ratio_percent: int) -> int:
    """1…20 for an integer percentage 0…100; ValueError outside 0…100 (a caller bug, not data)."""
    if not isinstance(ratio_percent, Integral) or isinstance(ratio_percent, bool):
        raise ValueError(f"size ratio must be an integer percentage, got {ratio_percent!r}")
    if not 0 <= ratio_percent <= 100:
        raise ValueError(f"size ratio must be within 0..100, got {ratio_percent}")
    return bisect_left(_BUCKET_UPPER, int(ratio_percent)) + 1


def area_ratio(crop_h: int, crop_w: int, frame_w: int, frame_h: int) -> int:
    """int(100 · crop_h · crop_w / (frame_w · frame_h)), truncated like MINTIME."""
    if frame_w <= 0 or frame_h <= 0:
        raise ValueError(f"frame size must be positive, got {frame_w}x{frame_h}")
    return int(100 * crop_h * crop_w / (frame_w * frame_h))


class SizeStage:
    """Stage: fills `Face.area_ratio` and `Face.size_bucket` from the native crop and the frame size.

    Crops cut from the frame never exceed it; a resampled `align:S` crop can be larger than a small
    frame, so the ratio is capped at 100 (bucket 20).
    """

    def __call__(self, faces: list[Face]) -> list[Face]:
        for face in faces:
            if face.crop is None:
                continue
            crop_h, crop_w = face.crop.shape[:2]
            ratio = min(100, area_ratio(crop_h, crop_w, face.frame_width, face.frame_height))
            face.area_ratio = ratio
            face.size_bucket = size_bucket(ratio)
        return faces
