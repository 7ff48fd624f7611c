"""Detections of a frame that repeats the previous one exactly are reused, not recomputed; a fallback
retry whose picture has not changed is not run at all.

Screen recordings, slides and frozen or letter-boxed stretches decode to bit-identical frames for
seconds at a time (H.264 skip blocks copy the reference); the detector is a pure function of the
pixels, so its answer for such a frame is known. Comparing costs one `memcmp` that stops at the first
differing byte: next to nothing for camera footage, where consecutive sampled frames differ at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from faceshard.records import Detections

DetectFn = Callable[[Sequence[np.ndarray]], list[Detections]]


class RepeatAwareDetector:
    """`detector(frames)` that runs the wrapped detector only on frames unlike the frame before them."""

    def __init__(self, detector: DetectFn) -> None:
        self.detector = detector
        self._last: tuple[np.ndarray, Detections] | None = None  # the last frame seen and its detections
        self.reused = 0

    def reset(self) -> None:
        """Forget the last frame (a new video starts)."""
        self._last = None

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        source: list[int] = []  # per frame: index into `frames` of the frame whose detections it takes
        previous = self._last[0] if self._last is not None else None
        for i, frame in enumerate(frames):
            same = previous is not None and previous.shape == frame.shape and np.array_equal(previous, frame)
            source.append(source[-1] if same and source else (-1 if same else i))
            previous = frame
        unique = sorted({s for s in source if s >= 0})
        found = dict(zip(unique, self.detector([frames[i] for i in unique]), strict=True))
        if self._last is not None:
            found[-1] = self._last[1]
        out = [found[s] for s in source]
        self.reused += sum(1 for i, s in enumerate(source) if s != i)
        if frames:
            self._last = (frames[-1], out[-1])
        return out


# A picture is "unchanged" when no 16×16 block of it moved by this many grey levels (0-255) on
# average: codec refinement of a still picture stays under ~2, a face turning, a hand or a cut moves
# blocks by tens.
UNCHANGED_BLOCK_LEVELS = 4.0
THUMBNAIL_BLOCK = 16


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """Block means of the picture (16×16-pixel blocks), float32: a cheap fingerprint of its content."""
    height, width = rgb.shape[:2]
    size = (max(1, width // THUMBNAIL_BLOCK), max(1, height // THUMBNAIL_BLOCK))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA).astype(np.float32)


def unchanged(before: np.ndarray | None, after: np.ndarray) -> bool:
    """Whether two thumbnails show the same picture up to codec noise."""
    if before is None or before.shape != after.shape:
        return False
    return float(np.abs(before - after).max()) < UNCHANGED_BLOCK_LEVELS


class StillPictureSkipper:
    """`detector(frames)` that carries a face-less verdict over to frames whose picture has not changed.

    A still picture (slides, a title card, an empty room) that had no face has none a second later;
    only frames that differ from the last face-less picture, or whose run of unchanged frames starts
    with a face, are detected. Frames are given in decode order. An approximation (a face could appear
    below the 4-level change threshold): used only for `per_second` with a bounded fallback, never for
    the exhaustive MINTIME search or the index strategies.
    """

    def __init__(self, detector: DetectFn) -> None:
        self.detector = detector
        self._faceless: np.ndarray | None = None  # thumbnail of the last picture found face-less
        self.skipped = 0

    def reset(self) -> None:
        self._faceless = None

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        looks = [thumbnail(frame) for frame in frames]
        out: list[Detections | None] = [None] * len(frames)
        # runs of unchanged pictures; a run continuing the last face-less picture is face-less already
        heads = [
            i for i in range(len(frames)) if not unchanged(looks[i - 1] if i else self._faceless, looks[i])
        ]
        run_of = [max((h for h in heads if h <= i), default=-1) for i in range(len(frames))]
        found = dict(zip(heads, self.detector([frames[h] for h in heads]), strict=True))
        rest = [i for i in range(len(frames)) if i not in found and run_of[i] >= 0 and len(found[run_of[i]])]
        found.update(zip(rest, self.detector([frames[i] for i in rest]), strict=True))
        for i in range(len(frames)):
            out[i] = found.get(i, Detections.empty())
            if not len(out[i]):  # type: ignore[arg-type]
                self._faceless = looks[i]
        self.skipped += len(frames) - len(found)
        return out  # type: ignore[return-value]
