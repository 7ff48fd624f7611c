"""Face detectors (SPEC §2): a tiny registry {mtcnn, dlib} behind one call, `detector(frames)`.

Every detector returns, per frame, float32 boxes (x1, y1, x2, y2) in original-frame pixels (they may
exceed the frame; cropping clips), ordered largest first, after `min_score` and the keep policy:
`all`, `largest`, or `first` = the detector's own first answer (MTCNN: most probable face; dlib: its
first rectangle, i.e. its highest score).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from faceshard.config import DetectConfig
from faceshard.models import registry
from faceshard.records import Detections

log = logging.getLogger(__name__)


class Detector(Protocol):
    """`detector(frames) -> one Detections per frame`; frames are RGB uint8 (H, W, 3)."""

    device: str  # where it runs, resolved: "cpu" or "cuda…"

    @property
    def weights(self) -> registry.WeightsInfo: ...

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]: ...


def resolve_device(device: str) -> str:
    """'cuda' when asked for ('auto' or 'cuda…') and available, else 'cpu' (with a warning if asked)."""
    import torch

    device = registry.resolve_device(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %r requested but CUDA is not available: detecting on CPU", device)
        return "cpu"
    return device


def auto_detect_scale(width: int, height: int) -> float:
    """DFDC winners' rule on the longer side: 2× below 300 px, 1× to 1000, 0.5× to 1900, else 0.33×."""
    side = max(width, height)
    if side < 300:
        return 2.0
    if side <= 1000:
        return 1.0
    if side <= 1900:
        return 0.5
    return 0.33


def _finish(boxes: np.ndarray, scores: np.ndarray, min_score: float, keep: str) -> Detections:
    """`boxes`/`scores` in the detector's own order → min_score, keep policy, largest first."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    passing = scores >= min_score
    boxes, scores = boxes[passing], scores[passing]
    if len(boxes) == 0:
        return Detections.empty()
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if keep == "first":
        order = np.array([0])
    elif keep == "largest":
        order = np.array([int(np.argmax(areas))])  # argmax: the earliest of equal areas
    else:
        order = np.argsort(-areas, kind="stable")
    return Detections(np.ascontiguousarray(boxes[order]), np.ascontiguousarray(scores[order]))


def mtcnn_weights() -> registry.WeightsInfo:
    """The P/R/O-net files shipped in the facenet-pytorch wheel, hashed together (nothing loaded)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise registry.WeightsUnavailableError(
            "facenet-pytorch is not installed (it ships the MTCNN weights)"
        )
    data = Path(spec.submodule_search_locations[0]) / "data"
    parts = [registry.fingerprint_file(data / f"{name}.pt") for name in ("pnet", "rnet", "onet")]
    return registry.WeightsInfo("mtcnn", str(data), registry.combine_fingerprints(parts))


def dlib_hog_weights() -> registry.WeightsInfo:
    """HOG has no weights file: the dlib release defines the detector."""
    import dlib  # a small extension module: no model is loaded

    release = dlib.__version__
    return registry.WeightsInfo("dlib-hog", f"dlib {release}", f"dlib-hog-{release}")


def detector_weights(cfg: DetectConfig) -> registry.WeightsInfo:
    """What `build_detector(cfg)` will run with, from the files alone (the driver loads no model)."""
    return {"mtcnn": mtcnn_weights, "dlib": dlib_hog_weights}[cfg.backend]()


class MTCNNDetector:
    """MTCNN on facenet-pytorch's nets and weights (they ship in its wheel), batched over frames of one size.

    The cascade is `models.mtcnn.MTCNNCascade`: facenet-pytorch's `detect_face` with its per-box work
    batched, equal in its results. `detect_scale` resizes each frame with PIL before detection
    (MINTIME: 0.5) and maps the boxes back; "auto" picks the scale per frame size (`auto_detect_scale`).
    """

    def __init__(self, cfg: DetectConfig, device: str = "auto") -> None:
        import torch

        from faceshard.models.mtcnn import MTCNNCascade

        self.cfg = cfg
        self.device = resolve_device(device)
        self._cascade = MTCNNCascade(
            thresholds=tuple(cfg.thresholds),
            min_face_size=cfg.min_face_size,
            factor=cfg.factor,
            device=torch.device(self.device),
        )

    @property
    def weights(self) -> registry.WeightsInfo:
        return mtcnn_weights()

    @property
    def fingerprint(self) -> str:
        return self.weights.fingerprint

    def _scale_for(self, width: int, height: int) -> float:
        scale = self.cfg.detect_scale
        return auto_detect_scale(width, height) if scale == "auto" else float(scale)

    def _detect_batch(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        height, width = frames[0].shape[:2]
        scale = self._scale_for(width, height)
        if scale == 1.0:
            batch = np.stack(frames)
            sx = sy = 1.0
        else:
            size = (max(1, int(width * scale)), max(1, int(height * scale)))
            batch = np.stack([np.asarray(Image.fromarray(f).resize(size)) for f in frames])
            sx, sy = width / size[0], height / size[1]
        if min(batch.shape[1:3]) < self.cfg.min_face_size:  # MTCNN's image pyramid would be empty
            return [Detections.empty() for _ in frames]
        out = []
        for frame_boxes, frame_probs in self._cascade(batch):
            if len(frame_boxes) == 0:
                out.append(Detections.empty())
                continue
            frame_boxes = np.asarray(frame_boxes, np.float64) * np.array([sx, sy, sx, sy])
            frame_probs = np.asarray(frame_probs, np.float64)
            order = np.argsort(-frame_probs, kind="stable")
            out.append(_finish(frame_boxes[order], frame_probs[order], self.cfg.min_score, self.cfg.keep))
        return out

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        results: list[Detections | None] = [None] * len(frames)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, frame in enumerate(frames):
            by_size.setdefault(frame.shape, []).append(i)
        for indices in by_size.values():
            for start in range(0, len(indices), self.cfg.batch_size):
                chunk = indices[start : start + self.cfg.batch_size]
                for i, dets in zip(chunk, self._detect_batch([frames[i] for i in chunk]), strict=True):
                    results[i] = dets
        return [r if r is not None else Detections.empty() for r in results]


class DlibDetector:
    """dlib's HOG `get_frontal_face_detector()` with `upsample` pyramid doublings (Megatron 0, DFB 1).

    Boxes are dlib's rectangle corners (left, top, right, bottom) as dlib reports them.
    `detect_scale` does not apply: dlib enlarges with `upsample` instead.
    """

    def __init__(self, cfg: DetectConfig, device: str = "auto") -> None:
        import dlib

        self.cfg = cfg
        self.device = "cpu"
        self._hog = dlib.get_frontal_face_detector()

    @property
    def weights(self) -> registry.WeightsInfo:
        return dlib_hog_weights()

    @property
    def fingerprint(self) -> str:
        return self.weights.fingerprint

    def _detect(self, frame: np.ndarray) -> Detections:
        rects, scores, _ = self._hog.run(np.ascontiguousarray(frame, dtype=np.uint8), self.cfg.upsample, 0.0)
        boxes = [(r.left(), r.top(), r.right(), r.bottom()) for r in rects]
        boxes_array, scores_array = np.array(boxes, np.float32), np.array(scores, np.float32)
        return _finish(boxes_array, scores_array, self.cfg.min_score, self.cfg.keep)

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        return [self._detect(frame) for frame in frames]


DETECTORS: dict[str, Callable[[DetectConfig, str], Detector]] = {
    "mtcnn": MTCNNDetector,
    "dlib": DlibDetector,
}


def build_detector(cfg: DetectConfig, device: str = "auto") -> Detector:
    """The configured detector with its model loaded (once, here); `device` is 'auto' | 'cpu' | 'cuda'."""
    if cfg.backend not in DETECTORS:
        raise ValueError(f"unknown detector {cfg.backend!r}; choose one of {', '.join(DETECTORS)}")
    return DETECTORS[cfg.backend](cfg, device)
