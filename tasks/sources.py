"""Source-aware processing: a fake made from a source video reuses the source's detections.

A fake of FaceForensics++, DFDC or Celeb-DF keeps its source's frames, background and face positions;
only the face pixels change. The worker processes the source first and keeps, for the group, what its
fakes can reuse (`SourceMemory`): the detector's answer on every frame it was asked about, the identity
of every kept face, and a small thumbnail and identity embedding of every kept face.

Each fake is checked first (`SourceMemory.mismatch`: same size, frame rate and frame count), then
detected through `SourceDetections`: the source's detections, with the detector run on a sample of the
fake's frames (1 in `verify_every` of the frames the source was detected on, and every frame where the
source's face count changes) whose boxes must match the source's (same count, IoU ≥ `verify_iou`). A
fake that fails raises `Misaligned` and is detected from scratch; its `videos` row says which path it
took (`detections`: `source` | `detector`) and why (`detections_note`).

Reused detections carry the source's detector scores (the one documented difference from a per-video
build: `faces.score`); boxes, crops and everything computed from the crops are the fake's own pixels.

Identities line up: each identity of a fake is linked to the source identity most of its faces sit on
(`identities.source_identity`), and scored by how far its crops are from the source's crops of the
same faces (`manip_pixel`: mean absolute difference of 32 × 32 thumbnails, 0-1; `manip_embed`: mean
identity-embedding distance), labelled `manipulated` when `manip_pixel` exceeds `sources.manipulated_pixel`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from faceshard.records import Detections, Face, Frame, VideoInfo, VideoTask

THUMB_SIDE = 32
FaceKey = tuple[int, int]  # (frame, face rank)


class Misaligned(Exception):
    """The fake does not line up with its source: detect it from scratch (the message says why)."""


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) boxes (x1, y1, x2, y2)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def matched_iou(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest IoU of the best one-to-one matching of two equally long box sets (1.0 when empty)."""
    if not len(a):
        return 1.0
    iou = box_iou(a, b)
    rows, cols = linear_sum_assignment(-iou)
    return float(iou[rows, cols].min())


def thumbnail(crop: np.ndarray) -> np.ndarray:
    """A 32 × 32 RGB float thumbnail in 0-1: what crops are compared on (robust to codec noise)."""
    return cv2.resize(crop, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


@dataclass
class SourceMemory:
    """What a source video leaves for its fakes, held in memory for its group only."""

    video_id: str
    info: VideoInfo | None = None
    detections: dict[int, Detections] = field(default_factory=dict)  # every frame the detector was asked
    order: list[int] = field(default_factory=list)  # those frames in the order they were detected
    thumbs: dict[FaceKey, np.ndarray] = field(default_factory=dict)
    embeddings: dict[FaceKey, np.ndarray] = field(default_factory=dict)
    identity: dict[FaceKey, int] = field(default_factory=dict)
    usable: bool = False  # set once the source has finished with status ok

    def record(self, frames: Sequence[Frame], detections: Sequence[Detections]) -> None:
        for frame, dets in zip(frames, detections, strict=True):
            self.detections[frame.index] = dets
            self.order.append(frame.index)

    def mismatch(self, info: VideoInfo) -> str | None:
        """Why a fake with this probe cannot be aligned with the source, before decoding it (None: may be)."""
        src = self.info
        if src is None or not self.usable:
            return "source has no usable detections"
        if (info.width, info.height) != (src.width, src.height):
            return f"size {info.width}x{info.height} differs from the source's {src.width}x{src.height}"
        if info.fps != src.fps:
            return f"frame rate {info.fps:g} differs from the source's {src.fps:g}"
        if info.n_frames_container != src.n_frames_container:
            return f"{info.n_frames_container} frames in the header, the source has {src.n_frames_container}"
        return None

    def check_length(self, info: VideoInfo) -> None:
        """After decoding: the stream's frame count must be the source's."""
        if self.info is not None and info.n_frames != self.info.n_frames:
            raise Misaligned(f"{info.n_frames} frames decoded, the source has {self.info.n_frames}")

    def verify_frames(self, every: int) -> set[int]:
        """Frames of the fake to run the detector on: 1 in `every`, and where the face count changes."""
        chosen = set(self.order[::every])
        counts = [len(self.detections[i]) for i in self.order]
        chosen.update(
            i for i, prev, now in zip(self.order[1:], counts, counts[1:], strict=False) if prev != now
        )
        return chosen


class SourceDetections:
    """Detection provider for a fake: its source's detections, verified on a sample of frames.

    The first checked frame is verified at once (a shifted fake fails before it is cropped further);
    the later ones are held and verified `batch` at a time, and the rest at `finish` (one detector call
    instead of one per decoded batch: the sample is 1 in `every`, so about one frame a batch).
    """

    def __init__(
        self,
        memory: SourceMemory,
        detect: Callable[[list[np.ndarray]], list[Detections]],
        every: int,
        min_iou: float,
        batch: int = 8,
    ) -> None:
        self.memory = memory
        self.detect = detect
        self.min_iou = min_iou
        self.batch = batch
        self.check = memory.verify_frames(every)
        self.held: list[Frame] = []
        self.verified = 0

    def __call__(self, frames: list[Frame]) -> list[Detections]:
        known = self.memory.detections
        missing = [frame.index for frame in frames if frame.index not in known]
        if missing:
            raise Misaligned(f"frame {missing[0]} was sampled but the source's frame was not")
        self.held.extend(frame for frame in frames if frame.index in self.check)
        if self.held and (not self.verified or len(self.held) >= self.batch):
            self._verify()
        return [known[frame.index] for frame in frames]

    def finish(self) -> None:
        """Verify the frames still held (raises Misaligned like a call does)."""
        if self.held:
            self._verify()

    def _verify(self) -> None:
        held, self.held = self.held, []
        known = self.memory.detections
        for frame, found in zip(held, self.detect([f.rgb for f in held]), strict=True):
            self._compare(frame.index, known[frame.index], found)
        self.verified += len(held)

    def _compare(self, index: int, source: Detections, found: Detections) -> None:
        if len(source) != len(found):
            raise Misaligned(f"frame {index}: {len(found)} faces, the source has {len(source)}")
        iou = matched_iou(source.boxes, found.boxes)
        if iou < self.min_iou:
            raise Misaligned(f"frame {index}: box IoU {iou:.2f} with the source's < {self.min_iou}")


class SourceFaces:
    """Face stage: a source records each kept face's thumbnail and identity embedding; a fake is
    compared with the source's face at the same (frame, rank).

    With `embed` and `sample` > 0 (a reused fake, `sources.embed_sample`), the fake's identities are
    carried over instead of clustered: each face takes the source's identity at its (frame, rank), and
    the identity embedder runs only on `sample` faces per identity, evenly spread over its frames, for
    `manip_embed`. Without, every face has its own embedding (the identity stage ran before) and the
    fake's faces are clustered as a per-video build clusters them.
    """

    def __init__(
        self,
        memory: SourceMemory,
        remember: bool,
        metric: str | None,
        embed: Callable[[list[Face]], list[Face]] | None = None,
        sample: int = 0,
    ) -> None:
        self.memory = memory
        self.remember = remember
        self.metric = metric
        self.embed_faces = embed if sample > 0 else None
        self.sampled = _spread(memory.identity, sample) if self.embed_faces is not None else set()
        self.pixel: dict[FaceKey, float] = {}
        self.embed: dict[FaceKey, float] = {}

    @property
    def carries_identities(self) -> bool:
        """Whether the fake's faces took the source's identities (then they are not clustered again)."""
        return self.embed_faces is not None

    def __call__(self, faces: list[Face]) -> list[Face]:
        if self.carries_identities:
            for face in faces:
                face.identity = self.memory.identity.get((face.frame, face.face), -1)
            chosen = [f for f in faces if f.crop is not None and (f.frame, f.face) in self.sampled]
            if chosen:
                self.embed_faces(chosen)  # type: ignore[misc]
        for face in faces:
            if face.crop is None:
                continue
            key = (face.frame, face.face)
            thumb = thumbnail(face.crop)
            if self.remember:
                self.memory.thumbs[key] = thumb
                if face.id_embedding is not None:
                    self.memory.embeddings[key] = np.asarray(face.id_embedding, np.float32)
                continue
            if key in self.memory.thumbs:
                self.pixel[key] = float(np.abs(thumb - self.memory.thumbs[key]).mean())
            other = self.memory.embeddings.get(key)
            if other is not None and face.id_embedding is not None:
                self.embed[key] = _distance(np.asarray(face.id_embedding, np.float32), other, self.metric)
        return faces


def _spread(identity: dict[FaceKey, int], sample: int) -> set[FaceKey]:
    """Per identity (−1 excluded), `sample` of its faces evenly spread over its frames (all if fewer)."""
    by_identity: dict[int, list[FaceKey]] = defaultdict(list)
    for key, label in identity.items():
        if label >= 0:
            by_identity[label].append(key)
    chosen: set[FaceKey] = set()
    for keys in by_identity.values():
        keys.sort()
        picks = np.linspace(0, len(keys) - 1, min(sample, len(keys))).round().astype(int)
        chosen.update(keys[int(i)] for i in picks)
    return chosen


def _distance(a: np.ndarray, b: np.ndarray, metric: str | None) -> float:
    if metric == "cosine":
        denom = float(np.linalg.norm(a) * np.linalg.norm(b)) or 1.0
        return 1.0 - float(a @ b) / denom
    return float(np.linalg.norm(a - b))


def identity_labels(
    faces: list[Face], memory: SourceMemory, compare: SourceFaces, threshold: float
) -> dict[int, dict[str, Any]]:
    """Per identity of a fake: the source identity most of its faces sit on, its scores and label."""
    by_identity: dict[int, list[FaceKey]] = defaultdict(list)
    for face in faces:
        if face.identity >= 0:
            by_identity[face.identity].append((face.frame, face.face))
    out = {}
    for identity, keys in by_identity.items():
        votes = Counter(memory.identity[k] for k in keys if memory.identity.get(k, -1) >= 0)
        pixel = [compare.pixel[k] for k in keys if k in compare.pixel]
        embed = [compare.embed[k] for k in keys if k in compare.embed]
        score = float(np.mean(pixel)) if pixel else None
        out[identity] = {
            "source_identity": votes.most_common(1)[0][0] if votes else None,
            "manip_pixel": score,
            "manip_embed": float(np.mean(embed)) if embed else None,
            "manipulated": None if score is None else score > threshold,
        }
    return out


def source_groups(videos: Sequence[VideoTask]) -> list[list[VideoTask]]:
    """Videos in processing order: each source of the shard right before its fakes, groups kept whole.

    Groups come in the order of their first video; a fake whose source is not in the shard is alone.
    """
    ids = {video.video_id for video in videos}
    groups: dict[str, list[VideoTask]] = {}
    for video in videos:
        key = video.source if video.source in ids else video.video_id
        groups.setdefault(key, []).append(video)
    return [sorted(group, key=lambda v: v.video_id != key) for key, group in groups.items()]
