"""The records that flow one way through a video: VideoTask → VideoInfo/Frame → Detections → Face.

Plain dataclasses so every stage runs and is tested without Prefect or Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VideoTask:
    """One manifest row, resolved: what a shard worker is asked to process."""

    video_id: str
    path: str  # absolute local path or fsspec URL, already checked against the allowed roots
    label: int  # 0 real, 1 fake
    method: str | None = None
    split: str = "all"
    error: str | None = None  # set at planning time when the path is refused (outside roots, ...)
    source: str | None = None  # video_id of the real video whose footage this fake is (SPEC §9)
    dataset: str | None = None  # the release it came from (forgerynet, ffpp, celebdf, dfdc, …)


@dataclass
class VideoInfo:
    """What the container says and what decoding found; both counts are recorded (SPEC §1)."""

    fps: float  # 0.0 when the container gives no frame rate
    width: int  # as displayed: after the container's rotation
    height: int
    n_frames_container: int | None  # from the stream header; may be wrong or missing
    n_frames_decoded: int = 0  # filled in as decoding proceeds
    # Frames in the stream, once decoding has finished: the decoded count, or, when the sampler stopped
    # decoding early, the frames decoded or handed to the decoder plus the packets demuxed after them.
    n_frames: int | None = None
    rotation: int = 0  # counter-clockwise degrees of the display matrix (0, 90, 180, 270)


@dataclass
class Frame:
    """One decoded, sampled frame in RGB (H, W, 3) uint8, C-contiguous."""

    index: int
    rgb: np.ndarray


@dataclass
class Detections:
    """Faces found on one frame: float boxes (x1, y1, x2, y2) in original pixels, may exceed the frame."""

    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass
class Face:
    """One face on one frame, enriched stage by stage; pixel arrays are dropped once encoded."""

    frame: int
    face: int  # rank within its frame after the keep-policy (0 = largest/first kept)
    box: np.ndarray  # (4,) float32, original pixels
    score: float
    frame_width: int
    frame_height: int
    crop: np.ndarray | None = None  # (h, w, 3) uint8 from the crop method (native size)
    box_in_crop: np.ndarray | None = None  # (4,) float32 detection box in crop coordinates
    crop_size: tuple[int, int] | None = None  # (h, w) of `crop`, kept after the pixels are dropped
    area_ratio: int | None = None
    size_bucket: int | None = None
    id_embedding: np.ndarray | None = None  # identity embedding (L2-normalised for facenet)
    depth: np.ndarray | None = None  # (h, w) uint8, same size as `crop`
    emb_rgb: np.ndarray | None = None
    emb_depth: np.ndarray | None = None
    tokens: np.ndarray | None = None  # (49, C)
    crop_bytes: bytes | None = None
    depth_bytes: bytes | None = None
    identity: int = -1
