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
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from faceshard.config import BuildConfig
from faceshard.errors import VideoError
from faceshard.models.detectors import build_detector, detector_weights, resolve_device
from faceshard.models.identity import IDENTITY_CLASSES, build_identity_embedder, identity_weights
from faceshard.models.registry import WeightsUnavailableError
from faceshard.records import Face, Frame, VideoTask
from faceshard.storage.schema import video_row
from faceshard.tasks.crops import CropEncoder, Cropper, encode_image
from faceshard.tasks.decode import iter_frames, probe
from faceshard.tasks.identity import assign_identities, clustering_rule
from faceshard.tasks.repeats import RepeatAwareDetector, StillPictureSkipper
from faceshard.tasks.sampling import make_selector
from faceshard.tasks.size import SizeStage

log = logging.getLogger(__name__)

Stage = Callable[[list[Face]], list[Face]]

# Frames held back (decoded, waiting for an earlier frame's verdict) before the batch is detected early:
# bounds memory to a few detection batches of RGB frames whatever the video's length.
MAX_HELD_PER_BATCH = 3


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


def check_config(cfg: BuildConfig) -> None:
    """Refuse combinations no video can be processed with (before any model loads or video runs)."""
    if cfg.identity.enabled:
        embedder = IDENTITY_CLASSES[cfg.identity.embedder]
        clustering_rule(cfg.identity, embedder.metric, embedder.default_threshold)
    if cfg.embed.enabled and cfg.embed.depth and not cfg.depth.enabled:
        raise ValueError("embed.depth=true needs depth.enabled=true")


def weights_manifest(cfg: BuildConfig) -> dict[str, dict[str, Any]]:
    """Per role (detector, identity, depth, embed): name, source, fingerprint and whether random.

    Decided from the weights' files (content hashes, cached hub revisions, or `random`) without
    loading any model, so the driver stays light; the same functions give each loaded model its
    `weights`. Missing weights and bad settings raise here, before anything is written.
    """
    check_config(cfg)
    allow_random = cfg.runtime.allow_random_weights
    roles, missing = {}, []
    for role, find in weight_roles(cfg).items():  # every missing model is named at once, not one per try
        try:
            roles[role] = find(allow_random)
        except WeightsUnavailableError as exc:
            missing.append(f"[{role}] {exc}")
    if len(missing) == 1:
        raise WeightsUnavailableError(missing[0].partition("] ")[2])
    if missing:
        raise WeightsUnavailableError(f"{len(missing)} models have no weights:\n" + "\n".join(missing))
    return {role: asdict(info) for role, info in roles.items()}


def weight_roles(cfg: BuildConfig) -> dict[str, Callable[[bool], Any]]:
    """Per role the build runs, the function that finds its weights from files (no model loaded):
    called with whether random init is allowed, it returns a WeightsInfo or raises
    WeightsUnavailableError naming every place looked at and how to provide the weights."""
    roles: dict[str, Callable[[bool], Any]] = {"detector": lambda allow: detector_weights(cfg.detect)}
    if cfg.identity.enabled:
        roles["identity"] = lambda allow: identity_weights(cfg.identity, allow)
    if cfg.depth.enabled:
        from faceshard.models.depth import depth_weights

        roles["depth"] = lambda allow: depth_weights(cfg.depth.model, allow)
    if cfg.embed.enabled:
        from faceshard.models.embedders import embed_weights

        roles["embed"] = lambda allow: embed_weights(cfg.embed.model, cfg.embed.checkpoint, allow)
    return roles


class ModelsUnavailable(RuntimeError):
    """A model of the build could not be loaded: a fault of the shard (retried, then recorded), never
    an error row of the video that happened to need it first."""


class VideoProcessor:
    """All models of a build, loaded once; `processor(video, shard_id) -> VideoResult`."""

    def __init__(self, cfg: BuildConfig, device: str | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(device or cfg.runtime.device)
        self.detector = build_detector(cfg.detect, self.device)
        self.detect = RepeatAwareDetector(self.detector)  # exact: a bit-identical frame's detections
        self.detect_still = StillPictureSkipper(self.detect)  # bounded per_second: still, face-less pictures
        self.cropper = Cropper(cfg.crop)
        self.size = SizeStage()
        self.encoder = CropEncoder(cfg.crop)
        check_config(cfg)
        self.identity = (
            build_identity_embedder(cfg.identity, self.device, cfg.runtime.allow_random_weights)
            if cfg.identity.enabled
            else None
        )
        if self.identity is not None:
            self.metric, self.threshold = clustering_rule(
                cfg.identity, self.identity.metric, self.identity.default_threshold
            )
        # Depth and embedding models (their libraries alone take seconds to import) load on a thread
        # while the first video decodes and detects; the per-face stages wait for them.
        loader = ThreadPoolExecutor(1, "late-models")
        self._late: Future[tuple[Any, Any]] = loader.submit(self._load_late)
        loader.shutdown(wait=False)
        # Faces wait for a full batch of the batched models; crops held are bounded by this number.
        self.face_batch = max(cfg.depth.batch_size, cfg.embed.batch_size)

    def _load_late(self) -> tuple[Any, Any]:
        cfg, allow_random = self.cfg, self.cfg.runtime.allow_random_weights
        depth = embedder = None
        if cfg.depth.enabled:
            from faceshard.models.depth import DepthEstimator

            depth = DepthEstimator(
                cfg.depth.model,
                cfg.depth.input_size,
                self.device,
                allow_random=allow_random,
                batch_size=cfg.depth.batch_size,
                input_spec=cfg.depth.input,
                normalise=cfg.depth.normalise,
                processor=cfg.depth.processor,
            )
        if cfg.embed.enabled:
            from faceshard.models.embedders import Embedder

            embedder = Embedder(
                cfg.embed.model,
                cfg.embed.checkpoint,
                cfg.embed.output,
                cfg.embed.dtype,
                self.device,
                allow_random=allow_random,
                batch_size=cfg.embed.batch_size,
                input_spec=cfg.embed.input,
                normalise=cfg.embed.normalise,
            )
        return depth, embedder

    def _late_models(self) -> tuple[Any, Any]:
        """The depth and embedding models once loaded; a failure to load is the shard's, not a video's."""
        try:
            return self._late.result()
        except Exception as exc:
            raise ModelsUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def load_failed(self) -> bool:
        """Whether a model failed to load (a worker then builds a new processor for the next shard)."""
        return self._late.done() and self._late.exception() is not None

    def wait_for_models(self) -> None:
        """Return once every model is loaded (raises ModelsUnavailable if one cannot be)."""
        self._late_models()

    @property
    def depth(self) -> Any:
        return self._late_models()[0]

    @property
    def embedder(self) -> Any:
        return self._late_models()[1]

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
        row = video_row(video, shard_id)
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
        except ModelsUnavailable:
            raise
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
        sampling = self.cfg.sampling
        selector = make_selector(sampling.strategy, sampling.max_frames, sampling.fallback())
        selector.start(info, video.path)
        self.detect.reset()
        self.detect_still.reset()
        detected: list[Face] = []  # detected and cropped, not yet enriched (acceptance may be pending)
        accepted: list[Face] = []  # accepted, waiting for a full batch of the per-face stages
        enriched: list[Face] = []
        batch: list[Frame] = []  # frames to detect in the next call
        held: list[Frame] = []  # decoded frames waiting for the verdict on an earlier frame
        stages = self.face_stages()
        last_faceless = -1  # faces at or before a face-less frame can only be kept if already accepted

        def flush() -> None:
            detect = self.detect_still if skip_still else self.detect
            with clock("detect"):
                detections = detect([frame.rgb for frame in batch]) if batch else []
            nonlocal last_faceless
            for frame, dets in zip(batch, detections, strict=True):
                selector.found(frame.index, len(dets))
                if not len(dets):
                    last_faceless = frame.index
                with clock("crop"):
                    detected.extend(self.cropper(frame, dets))
            batch.clear()
            release_held()
            if not selector.needs_feedback:
                enrich(drain_accepted(final=True))
            elif selector.final_when_accepted:
                enrich(drain_accepted(final=False))
            else:  # acceptance may still move to a later run: hold faces, drop the hopeless ones
                detected[:] = [f for f in detected if selector.accepted(f.frame) or f.frame > last_faceless]

        def release_held() -> None:
            """After a batch's verdicts: drop held frames no longer wanted, queue those now ready."""
            waiting = []
            for frame in held:
                if selector.want(frame.index):
                    (batch if selector.ready(frame.index) else waiting).append(frame)
            held[:] = waiting

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
            """Run the per-face stages on full batches (faces arrive a few frames at a time)."""
            accepted.extend(faces)
            if not accepted or (len(accepted) < self.face_batch and not force):
                return
            for name, stage in stages:
                with clock(name):
                    stage(accepted)
            enriched.extend(accepted)
            accepted.clear()

        skip_still = sampling.strategy == "per_second" and sampling.fallback() is not None
        frames = iter_frames(
            video.path, info, selector.want, lambda: selector.done, feedback=selector.needs_feedback
        )
        batch_size = 1 if selector.sequential else self.cfg.detect.batch_size
        while True:
            with clock("decode"):
                frame = next(frames, None)
            if frame is None:
                break
            (batch if selector.ready(frame.index) else held).append(frame)
            if len(batch) >= batch_size or len(held) >= MAX_HELD_PER_BATCH * batch_size:
                flush()
        while batch or held:  # the tail: each flush resolves the earliest held frame of every second
            if not batch:
                batch.extend(held)  # never reached for a consistent selector; guards an endless loop
                held.clear()
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
