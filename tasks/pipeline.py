"""One video, one pass: decode → sample → detect → crop → size → identity/depth/embed → rows.

`VideoProcessor` loads its models once (per worker process, through `models.registry.cached_model`)
and is called per video. It never raises for a bad video: every video ends as exactly one `videos`
row with status `ok`, `no_faces` or `error` and a readable reason.

Faces are enriched batch by batch as frames are detected, and each face's pixels are dropped once
encoded, so memory is bounded by a detection batch, not by the video's length. Only the small
identity embeddings are kept until the video's end, when identities are clustered.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from faceshard.config import BuildConfig
from faceshard.errors import VideoError
from faceshard.models.depth import DepthEstimator
from faceshard.models.detectors import build_detector, resolve_device
from faceshard.models.embedders import Embedder
from faceshard.models.identity import build_identity_embedder
from faceshard.records import Face, Frame, VideoTask
from faceshard.tasks.crops import CropEncoder, Cropper, encode_image
from faceshard.tasks.decode import iter_frames, probe
from faceshard.tasks.identity import assign_identities, clustering_rule
from faceshard.tasks.sampling import make_selector
from faceshard.tasks.size import SizeStage

log = logging.getLogger(__name__)

Stage = Callable[[list[Face]], list[Face]]


@dataclass
class VideoResult:
    """The rows one video contributes to its shard, plus where its time went."""

    video: dict[str, Any]
    faces: list[dict[str, Any]] = field(default_factory=list)
    identities: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class StageClock:
    """Accumulates wall seconds per stage name (decode time is what is left of the total)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


class VideoProcessor:
    """All models of a build, loaded once; `processor(video, shard_id) -> VideoResult`."""

    def __init__(self, cfg: BuildConfig, device: str | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(device or cfg.runtime.device)
        allow_random = cfg.runtime.allow_random_weights
        self.detector = build_detector(cfg.detect, self.device)
        self.cropper = Cropper(cfg.crop)
        self.size = SizeStage()
        self.encoder = CropEncoder(cfg.crop)
        self.identity = build_identity_embedder(cfg.identity, self.device) if cfg.identity.enabled else None
        if self.identity is not None:  # resolved now so that a bad metric/threshold fails before any video
            self.metric, self.threshold = clustering_rule(
                cfg.identity, self.identity.metric, self.identity.default_threshold
            )
        self.depth = (
            DepthEstimator(
                cfg.depth.model,
                cfg.depth.input_size,
                self.device,
                allow_random=allow_random,
                batch_size=cfg.depth.batch_size,
                input_spec=cfg.depth.input,
            )
            if cfg.depth.enabled
            else None
        )
        self.embedder = (
            Embedder(
                cfg.embed.model,
                cfg.embed.checkpoint,
                cfg.embed.output,
                cfg.embed.dtype,
                self.device,
                allow_random=allow_random,
                batch_size=cfg.embed.batch_size,
                input_spec=cfg.embed.input,
            )
            if cfg.embed.enabled
            else None
        )
        # Faces wait for a full batch of the batched models; crops held are bounded by this number.
        self.face_batch = max(cfg.depth.batch_size, cfg.embed.batch_size)
        if cfg.embed.enabled and cfg.embed.depth and not cfg.depth.enabled:
            raise ValueError("embed.depth=true needs depth.enabled=true")

    @property
    def weights(self) -> dict[str, dict[str, Any]]:
        """Which weights produced the rows, per role: fingerprinted and written to the metadata."""
        roles: dict[str, Any] = {"detector": self.detector.weights}
        if self.identity is not None:
            roles["identity"] = self.identity.weights
        if self.depth is not None:
            roles["depth"] = self.depth.weights
        if self.embedder is not None:
            roles["embed"] = self.embedder.weights
        return {role: asdict(info) for role, info in roles.items()}

    @property
    def dims(self) -> dict[str, Any]:
        """Sizes of the fixed-size embedding columns, for the Arrow schema."""
        embed = self.cfg.embed
        dim = self.embedder.dim if self.embedder is not None else None
        return {
            "emb_rgb_dim": dim if embed.enabled and embed.output == "pooled" else None,
            "emb_depth_dim": dim if embed.enabled and embed.depth else None,
            "tokens_shape": (49, dim) if embed.enabled and embed.output == "tokens" else None,
            "emb_dtype": embed.dtype,
            "with_crop": self.cfg.crop.save,
            "with_depth": self.cfg.depth.enabled and self.cfg.depth.save,
        }

    def face_stages(self) -> list[tuple[str, Stage]]:
        """The per-face stages in order; each fills fields of the faces it is given."""
        stages: list[tuple[str, Stage]] = [("size", self.size)]
        if self.identity is not None:
            stages.append(("identity", self.identity))
        if self.depth is not None:
            stages.append(("depth", self.depth))
        if self.embedder is not None:
            stages.append(("embed", self.embedder))
            if self.cfg.embed.depth:
                stages.append(("embed_depth", self.embedder.embed_depth))
        stages.append(("encode", self._encode))
        return stages

    def _encode(self, faces: list[Face]) -> list[Face]:
        self.encoder(faces)
        save_depth = self.cfg.depth.save
        for face in faces:
            if save_depth and face.depth is not None:
                face.depth_bytes = encode_image(face.depth, "png")
            if face.crop is not None:
                face.crop_size = face.crop.shape[:2]
            face.crop, face.depth = None, None  # pixels are encoded or no longer needed
        return faces

    def __call__(self, video: VideoTask, shard_id: int) -> VideoResult:
        started = time.perf_counter()
        clock = StageClock()
        row = _video_row(video, shard_id)
        if video.error is not None:
            return VideoResult(_finish(row, "error", video.error, started))
        try:
            faces, info = self._faces(video, clock)
            row.update(
                fps=info.fps,
                n_frames=info.n_frames,
                n_frames_container=info.n_frames_container,
                width=info.width,
                height=info.height,
            )
            with clock("cluster"):
                identity_rows = self._identities(faces)
        except VideoError as exc:
            return VideoResult(_finish(row, "error", str(exc), started), seconds=dict(clock.seconds))
        except Exception as exc:  # a model or library failure on this input: recorded, never fatal
            log.exception("video %s failed", video.video_id)
            message = f"{type(exc).__name__}: {exc}"
            return VideoResult(_finish(row, "error", message, started), seconds=dict(clock.seconds))
        row.update(n_faces=len(faces), n_identities=len(identity_rows))
        status = "ok" if faces else "no_faces"
        face_rows = [_face_row(face, video) for face in faces]
        id_rows = [{"video_id": video.video_id, "split": video.split, **r} for r in identity_rows]
        return VideoResult(_finish(row, status, None, started), face_rows, id_rows, dict(clock.seconds))

    def _faces(self, video: VideoTask, clock: StageClock) -> tuple[list[Face], Any]:
        with clock("decode"):
            info = probe(video.path)
        selector = make_selector(self.cfg.sampling.strategy, self.cfg.sampling.max_frames)
        selector.start(info, video.path)
        detected: list[Face] = []  # detected and cropped, not yet enriched (acceptance may be pending)
        accepted: list[Face] = []  # accepted, waiting for a full batch of the per-face stages
        enriched: list[Face] = []
        batch: list[Frame] = []
        stages = self.face_stages()
        last_faceless = -1  # faces at or before a face-less frame can only be kept if already accepted

        def flush() -> None:
            if not batch:
                return
            with clock("detect"):
                detections = self.detector([frame.rgb for frame in batch])
            nonlocal last_faceless
            for frame, dets in zip(batch, detections, strict=True):
                selector.found(frame.index, len(dets))
                if not len(dets):
                    last_faceless = frame.index
                with clock("crop"):
                    detected.extend(self.cropper(frame, dets))
            batch.clear()
            if not selector.needs_feedback:
                enrich(drain_accepted(final=True))
            elif selector.final_when_accepted:
                enrich(drain_accepted(final=False))
            else:  # acceptance may still move to a later run: hold faces, drop the hopeless ones
                detected[:] = [f for f in detected if selector.accepted(f.frame) or f.frame > last_faceless]

        def drain_accepted(final: bool) -> list[Face]:
            """Faces whose frame is accepted; rejected ones are dropped once acceptance is final."""
            ready = [face for face in detected if selector.accepted(face.frame)]
            if final:
                detected.clear()
            else:  # accepted now means accepted for good: keep only the undecided ones
                kept_frames = {face.frame for face in ready}
                detected[:] = [f for f in detected if f.frame not in kept_frames]
            return ready

        def enrich(faces: list[Face], force: bool = False) -> None:
            """Run the per-face stages on full batches (per_second detects one frame at a time)."""
            accepted.extend(faces)
            if not accepted or (len(accepted) < self.face_batch and not force):
                return
            for name, stage in stages:
                with clock(name):
                    stage(accepted)
            enriched.extend(accepted)
            accepted.clear()

        frames = iter_frames(
            video.path, info, selector.want, lambda: selector.done, feedback=selector.needs_feedback
        )
        while True:
            with clock("decode"):
                frame = next(frames, None)
            if frame is None:
                break
            batch.append(frame)
            if selector.needs_feedback or len(batch) >= self.cfg.detect.batch_size:
                flush()
        flush()
        enrich(drain_accepted(final=True), force=True)
        enriched.sort(key=lambda face: (face.frame, face.face))
        return enriched, info

    def _identities(self, faces: list[Face]) -> list[dict[str, Any]]:
        """Cluster the video's faces into identities (SPEC §5) and rank them; fills `Face.identity`."""
        if self.identity is None or not faces:
            return []
        rows = assign_identities(faces, self.cfg.identity, self.metric, self.threshold)
        return [asdict(row) for row in rows]


def _video_row(video: VideoTask, shard_id: int) -> dict[str, Any]:
    return {
        "video_id": video.video_id,
        "path": video.path,
        "label": video.label,
        "method": video.method,
        "split": video.split,
        "source": video.source,
        "dataset": video.dataset,
        "status": "error",
        "error": None,
        "fps": None,
        "n_frames": None,
        "n_frames_container": None,
        "width": None,
        "height": None,
        "n_faces": 0,
        "n_identities": 0,
        "shard": shard_id,
        "seconds": 0.0,
    }


def _finish(row: dict[str, Any], status: str, error: str | None, started: float) -> dict[str, Any]:
    row.update(status=status, error=error, seconds=round(time.perf_counter() - started, 4))
    return row


def _face_row(face: Face, video: VideoTask) -> dict[str, Any]:
    x1, y1, x2, y2 = (float(v) for v in face.box)
    return {
        "video_id": video.video_id,
        "split": video.split,
        "frame": face.frame,
        "face": face.face,
        "identity": face.identity,
        "x1": x1,
        "y1": y1,
        "x2": x2,
        "y2": y2,
        "score": face.score,
        "area_ratio": face.area_ratio,
        "size_bucket": face.size_bucket,
        "emb_rgb": face.emb_rgb,
        "emb_depth": face.emb_depth,
        "tokens": face.tokens,
        "crop": face.crop_bytes,
        "depth": face.depth_bytes,
    }
