"""`faceshard preview VIDEO…`: what the detector and the clustering will do, before a build.

Each video goes through the build's own `VideoProcessor` (the same decode, sampling, detection,
crop, size and identity code; no output is opened). Depth and embeddings are switched off and crops
are always encoded: neither changes a box, a size bucket or an identity. A recorder around the
processor's cropper sees every detected frame and its detections, so the page can show frames the
sampler later dropped and detections that gave no crop. One PNG and one JSON (boxes, identities,
drops) per video.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from faceshard.config import BuildConfig
from faceshard.models.threads import limit_threads
from faceshard.records import Detections, Face, Frame, VideoTask
from faceshard.tasks.crops import Cropper
from faceshard.tasks.pipeline import VideoProcessor, VideoResult

FRAME_SIDE = 480  # recorded frames are downscaled to this longest side
MAX_RECORDED = 96  # frames kept per video (every other one is dropped when full)
SHOWN_FRAMES = 6
CROPS_PER_IDENTITY = 8
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def preview_config(cfg: BuildConfig) -> BuildConfig:
    """`cfg` with crops encoded and no depth/embeddings (they change no box, bucket or identity)."""
    return cfg.model_copy(
        update={
            "crop": cfg.crop.model_copy(update={"save": True}),
            "depth": cfg.depth.model_copy(update={"enabled": False}),
            "embed": cfg.embed.model_copy(update={"enabled": False, "depth": False}),
        }
    )


@dataclass
class SeenFrame:
    """A detected frame as the cropper saw it: a small copy, its scale, detections and crops made."""

    index: int
    rgb: np.ndarray
    scale: float
    boxes: np.ndarray  # (N, 4) detections in original pixels
    cropped: int


class CropRecorder:
    """Wraps the processor's `Cropper`: records each detected frame, then crops as the build does."""

    def __init__(self, cropper: Cropper) -> None:
        self.cropper = cropper
        self.frames: list[SeenFrame] = []
        self.stride = 1
        self.calls = 0

    def __call__(self, frame: Frame, dets: Detections) -> list[Face]:
        faces = self.cropper(frame, dets)
        self.calls += 1
        if (self.calls - 1) % self.stride == 0:
            height, width = frame.rgb.shape[:2]
            scale = min(1.0, FRAME_SIDE / max(height, width))
            image = Image.fromarray(frame.rgb).resize(
                (max(1, round(width * scale)), max(1, round(height * scale)))
            )
            self.frames.append(
                SeenFrame(frame.index, np.asarray(image), scale, dets.boxes.copy(), len(faces))
            )
            if len(self.frames) > MAX_RECORDED:
                self.frames = self.frames[::2]
                self.stride *= 2
        return faces

    def reset(self) -> None:
        self.frames, self.stride, self.calls = [], 1, 0


@dataclass
class Preview:
    """One video's preview: the build's rows for it, the frames seen, and what was dropped and why."""

    video: VideoTask
    result: VideoResult
    frames: list[SeenFrame]
    dropped: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        keys = ("frame", "face", "identity", "x1", "y1", "x2", "y2", "score", "area_ratio", "size_bucket")
        return {
            "video_id": self.video.video_id,
            "path": self.video.path,
            "status": self.result.video["status"],
            "error": self.result.video["error"],
            "n_faces": self.result.video["n_faces"],
            "n_identities": self.result.video["n_identities"],
            "faces": [{k: face[k] for k in keys} for face in self.result.faces],
            "dropped": self.dropped,
        }


class Previewer:
    """The build's processor for `cfg` (models loaded once) with a recorder on its cropper."""

    def __init__(self, cfg: BuildConfig) -> None:
        self.cfg = preview_config(cfg)
        # Thread pools sized as a build worker's (`tasks.shard.get_processor`): the same thread count
        # gives the models' float sums in the same order, so the boxes are the build's to the bit.
        limit_threads(self.cfg.runtime.cpus_per_shard)
        self.processor = VideoProcessor(self.cfg)
        self.recorder = CropRecorder(self.processor.cropper)
        self.processor.cropper = self.recorder  # type: ignore[assignment]

    def __call__(self, path: str | Path) -> Preview:
        resolved = Path(path).resolve()
        video = VideoTask(video_id=resolved.name, path=str(resolved), label=0)
        self.recorder.reset()
        result = self.processor(video, shard_id=0)
        preview = Preview(video, result, list(self.recorder.frames))
        preview.dropped = self._dropped(preview)
        return preview

    def _dropped(self, preview: Preview) -> list[str]:
        """What the build would leave out of this video's rows, and why (counts)."""
        detect, identity = self.cfg.detect, self.cfg.identity
        out = []
        if detect.keep != "all":
            out.append(f"detect.keep={detect.keep}: at most one face per frame, the others are not kept")
        if detect.min_score > 0:
            out.append(f"detect.min_score={detect.min_score}: lower-scoring detections are not kept")
        seen = preview.frames
        if self.recorder.stride == 1:
            faceless = sum(1 for frame in seen if not len(frame.boxes))
            if faceless:
                out.append(f"{faceless} of {len(seen)} detected frames had no face")
            uncropped = sum(len(frame.boxes) - frame.cropped for frame in seen)
            if uncropped:
                out.append(f"{uncropped} detections outside the frame or with an empty crop")
            kept_frames = {face["frame"] for face in preview.result.faces}
            unaccepted = sum(
                frame.cropped for frame in seen if frame.cropped and frame.index not in kept_frames
            )
            if unaccepted:
                out.append(
                    f"{unaccepted} faces on frames the sampler did not accept ({self.cfg.sampling.strategy})"
                )
        unassigned = sum(1 for face in preview.result.faces if face["identity"] == -1)
        if unassigned:
            out.append(
                f"{unassigned} faces in no identity (cluster too small: identity.min_cluster_ratio="
                f"{identity.min_cluster_ratio}, clustering={identity.clustering})"
            )
        if preview.result.video["error"]:
            out.append(f"video failed: {preview.result.video['error']}")
        seen = f"{self.recorder.calls} frames detected ({self.cfg.sampling.strategy} sampling)"
        return [seen, *(out or ["nothing dropped"])]


def preview_videos(paths: list[str], cfg: BuildConfig, out: Path) -> list[Path]:
    """Preview each video into `out` (`<name>.png` and `<name>.json`); returns the PNG paths."""
    out.mkdir(parents=True, exist_ok=True)
    previewer = Previewer(cfg)
    written = []
    for path in paths:
        preview = previewer(path)
        stem = out / Path(preview.video.video_id).stem
        stem.with_suffix(".json").write_text(json.dumps(preview.as_json(), indent=1, default=str))
        figure = draw(preview)
        figure.savefig(stem.with_suffix(".png"), dpi=72)
        written.append(stem.with_suffix(".png"))
    return written


def _colour(identity: int) -> str:
    return "#7f7f7f" if identity < 0 else COLOURS[identity % len(COLOURS)]


def draw(preview: Preview) -> Figure:
    """Sampled frames with boxes coloured by identity, crops per identity, size buckets, drops."""
    faces = preview.result.faces
    by_frame: dict[int, list[dict[str, Any]]] = {}
    for face in faces:
        by_frame.setdefault(face["frame"], []).append(face)
    identities = sorted({face["identity"] for face in faces}, key=lambda i: (i < 0, i))
    shown = _frames_to_show(preview.frames, by_frame)
    heights = [2.4, 1.3 * max(1, len(identities)), 2.4]
    figure = Figure(figsize=(12, sum(heights)), layout="constrained")
    figure.suptitle(
        f"{preview.video.video_id}: {preview.result.video['status']}, {len(faces)} faces,"
        f" {preview.result.video['n_identities']} identities",
        fontsize=12,
    )
    top, middle, bottom = figure.subfigures(3, 1, height_ratios=heights)
    _draw_frames(top, shown, by_frame)
    _draw_crops(middle, faces, identities)
    _draw_buckets_and_drops(bottom, faces, preview.dropped)
    return figure


def _frames_to_show(frames: list[SeenFrame], by_frame: dict[int, list[dict[str, Any]]]) -> list[SeenFrame]:
    """Up to SHOWN_FRAMES frames spread over the video, those with most kept faces preferred."""
    if len(frames) <= SHOWN_FRAMES:
        return frames
    ranked = sorted(frames, key=lambda f: (-len(by_frame.get(f.index, [])), f.index))
    pool = ranked[: SHOWN_FRAMES * 3]
    pool.sort(key=lambda f: f.index)
    picks = np.unique(np.linspace(0, len(pool) - 1, SHOWN_FRAMES).round().astype(int))
    return [pool[i] for i in picks]


def _draw_frames(panel: Any, shown: list[SeenFrame], by_frame: dict[int, list[dict[str, Any]]]) -> None:
    axes = np.atleast_1d(panel.subplots(1, max(1, len(shown))))
    for ax in axes:
        ax.set_axis_off()
    for ax, frame in zip(axes, shown, strict=False):
        ax.imshow(frame.rgb)
        kept = by_frame.get(frame.index, [])
        for face in kept:
            x1, y1, x2, y2 = (face[k] * frame.scale for k in ("x1", "y1", "x2", "y2"))
            colour = _colour(face["identity"])
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2, ec=colour))
            ax.text(
                x1,
                y1,
                str(face["identity"]),
                color="white",
                fontsize=8,
                va="bottom",
                bbox={"fc": colour, "ec": "none", "pad": 1},
            )
        if not kept:  # detections of a frame whose faces were not kept: dashed red
            for box in frame.boxes:
                x1, y1, x2, y2 = (float(v) * frame.scale for v in box[:4])
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.5, ec="red", ls="--"))
        ax.set_title(f"frame {frame.index}" + ("" if kept else " (not kept)"), fontsize=9)
    panel.suptitle("sampled frames, boxes coloured by identity (grey: no identity)", fontsize=10)


def _draw_crops(panel: Any, faces: list[dict[str, Any]], identities: list[int]) -> None:
    if not identities:
        ax = panel.subplots()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no faces", ha="center", va="center")
        return
    grid = np.atleast_2d(panel.subplots(len(identities), CROPS_PER_IDENTITY, squeeze=False))
    for row, identity in zip(grid, identities, strict=True):
        own = [face for face in faces if face["identity"] == identity]
        take = np.unique(np.linspace(0, len(own) - 1, min(CROPS_PER_IDENTITY, len(own))).round().astype(int))
        for ax in row:
            ax.set_axis_off()
        for ax, index in zip(row, take, strict=False):
            face = own[index]
            if face.get("crop"):
                ax.imshow(np.asarray(Image.open(io.BytesIO(face["crop"])).convert("RGB")))
            ax.set_title(f"f{face['frame']} · b{face['size_bucket']}", fontsize=7)
        name = "no identity" if identity < 0 else f"identity {identity}"
        row[0].text(
            -0.1,
            0.5,
            f"{name}\n{len(own)} faces",
            transform=row[0].transAxes,
            ha="right",
            va="center",
            fontsize=9,
            color=_colour(identity),
        )
    panel.suptitle("crops per identity in temporal order (f = frame, b = size bucket)", fontsize=10)


def _draw_buckets_and_drops(panel: Any, faces: list[dict[str, Any]], dropped: list[str]) -> None:
    left, right = panel.subplots(1, 2, width_ratios=[1, 1.4])
    buckets = Counter(face["size_bucket"] for face in faces if face["size_bucket"] is not None)
    left.bar(range(1, 21), [buckets.get(b, 0) for b in range(1, 21)], color="#4c72b0")
    left.set_xticks(range(1, 21, 2))
    left.set_xlabel("MINTIME size bucket (5 % of the frame each)")
    left.set_ylabel("faces")
    right.set_axis_off()
    right.set_title("sampled, dropped, and why", fontsize=10, loc="left")
    right.text(
        0,
        1,
        "\n".join(f"• {line}" for line in dropped),
        va="top",
        fontsize=9,
        wrap=True,
        transform=right.transAxes,
    )
