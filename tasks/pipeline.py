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
from typing import Any, Protocol, TypeVar

import numpy as np

from faceshard.config import BuildConfig
from faceshard.errors import VideoError
from faceshard.models.detectors import build_detector, detector_weights, resolve_device
from faceshard.models.identity import IDENTITY_CLASSES, build_identity_embedder, identity_weights
from faceshard.models.landmarks import align_weights
from faceshard.models.pretrained import depth_weights, embed_weights
from faceshard.models.registry import WeightsUnavailableError
from faceshard.records import Detections, Face, Frame, VideoInfo, VideoTask
from faceshard.storage.schema import video_row
from faceshard.tasks.crops import CropEncoder, Cropper, encode_image
from faceshard.tasks.decode import iter_frames, probe
from faceshard.tasks.identity import assign_identities, clustering_rule, identity_rows
from faceshard.tasks.repeats import RepeatAwareDetector, StillPictureSkipper
from faceshard.tasks.sampling import FrameSelector, SampledDetection, make_selector
from faceshard.tasks.size import SizeStage
from faceshard.tasks.sources import Misaligned, SourceDetections, SourceFaces, SourceMemory, identity_labels

log = logging.getLogger(__name__)

Stage = Callable[[list[Face]], list[Face]]
T = TypeVar("T")


@dataclass
class VideoResult:
    """The rows one video contributes to its shard, plus where its time went."""

    video: dict[str, Any]
    faces: list[dict[str, Any]] = field(default_factory=list)
    identities: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    detector_frames: int = 0  # frames the detector model itself was run on (repeats and reuse excluded)


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


def decoded_frames(path: str, info: VideoInfo, selector: FrameSelector) -> Iterator[Frame]:
    """The frame source: decode once, converting only the frames the sampling policy wants."""
    return iter_frames(path, info, selector.want, lambda: selector.done, feedback=selector.needs_feedback)


def timed(items: Iterator[T], clock: StageClock, name: str) -> Iterator[T]:
    """`items`, with the time spent producing each one counted under `name`."""
    while True:
        with clock(name):
            item = next(items, None)
        if item is None:
            return
        yield item


class DetectionProvider(Protocol):
    """Detections for a batch of frames, one `Detections` per frame, in order."""

    def __call__(self, frames: list[Frame]) -> list[Detections]: ...

    def finish(self) -> None:
        """Called once the video's frames are all detected (a verifying provider checks what it held)."""


class DetectorProvider:
    """Detections from the detector itself."""

    def __init__(self, detect: Callable[[list[np.ndarray]], list[Detections]]) -> None:
        self.detect = detect

    def __call__(self, frames: list[Frame]) -> list[Detections]:
        return self.detect([frame.rgb for frame in frames])

    def finish(self) -> None:
        """Nothing is held."""


class CountingDetector:
    """The detector, counting the frames it is run on (what source-aware builds save)."""

    def __init__(self, detector: Callable[[list[np.ndarray]], list[Detections]]) -> None:
        self.detector = detector
        self.frames = 0

    def __call__(self, frames: list[np.ndarray]) -> list[Detections]:
        self.frames += len(frames)
        return self.detector(frames)


class FaceStages:
    """The per-face stages, run on full batches (faces arrive a few frames at a time); `done` collects."""

    def __init__(self, stages: list[tuple[str, Stage]], batch_size: int, clock: StageClock) -> None:
        self.stages = stages
        self.batch_size = batch_size
        self.clock = clock
        self.waiting: list[Face] = []
        self.done: list[Face] = []

    def __call__(self, faces: list[Face], force: bool = False) -> None:
        """Queue `faces`; run the stages once a batch is full (or on `force`, at the video's end)."""
        self.waiting.extend(faces)
        if not self.waiting or (len(self.waiting) < self.batch_size and not force):
            return
        for name, stage in self.stages:
            with self.clock(name):
                stage(self.waiting)
        self.done.extend(self.waiting)
        self.waiting = []


def check_config(cfg: BuildConfig) -> None:
    """Refuse combinations no video can be processed with (before any model loads or video runs)."""
    if cfg.identity.enabled:
        embedder = IDENTITY_CLASSES[cfg.identity.embedder]
        clustering_rule(cfg.identity, embedder.metric, embedder.default_threshold)
    if cfg.embed.enabled and cfg.embed.depth and not cfg.depth.enabled:
        raise ValueError("embed.depth=true needs depth.enabled=true")
    if cfg.crop.landmarks_model and not cfg.crop.method.startswith("align:"):
        raise ValueError(f"crop.landmarks_model is used by crop.method=align:S only, not {cfg.crop.method}")


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
        roles["depth"] = lambda allow: depth_weights(cfg.depth.model, allow)
    if cfg.embed.enabled:
        roles["embed"] = lambda allow: embed_weights(cfg.embed.model, cfg.embed.checkpoint, allow)
    if cfg.crop.landmarks_model:  # the default 68-point model is left unrecorded, as older outputs have it
        roles["landmarks"] = lambda allow: align_weights(cfg.crop.landmarks_model)
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
        self.counted = CountingDetector(self.detector)
        self.detect = RepeatAwareDetector(self.counted)  # exact: a bit-identical frame's detections
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
                positions=cfg.depth.positions,
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
        if self.cfg.crop.landmarks_model:
            roles["landmarks"] = align_weights(self.cfg.crop.landmarks_model)
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

    def __call__(self, video: VideoTask, shard_id: int, group: SourceMemory | None = None) -> VideoResult:
        """One video's rows. With `group` (source-aware builds), the group's source fills it as it is
        processed and each fake of the group reuses it where it lines up (tasks/sources.py)."""
        started = time.perf_counter()
        clock = StageClock()
        row = video_row(video, shard_id)
        if video.error is not None:
            return VideoResult(_finish(row, "error", video.error, started))
        counted_before = self.counted.frames
        try:
            faces, info, compare = self._faces(video, clock, row, group)
            row.update(
                fps=info.fps,
                n_frames=info.n_frames,
                n_frames_container=info.n_frames_container,
                width=info.width,
                height=info.height,
            )
            with clock("cluster"):
                identity_rows = self._identities(faces, compare)
        except VideoError as exc:
            return self._failed(row, str(exc), started, clock, counted_before)
        except ModelsUnavailable:
            raise
        except Exception as exc:  # a model or library failure on this input: recorded, never fatal
            log.exception("video %s failed", video.video_id)
            return self._failed(row, f"{type(exc).__name__}: {exc}", started, clock, counted_before)
        if group is not None and group.video_id == video.video_id:
            group.identity = {(face.frame, face.face): face.identity for face in faces}
            group.usable = bool(faces)
        elif group is not None and compare is not None:
            labels = identity_labels(faces, group, compare, self.cfg.sources.manipulated_pixel)
            for identity_row in identity_rows:
                identity_row.update(labels.get(identity_row["identity"], {}))
        row.update(n_faces=len(faces), n_identities=len(identity_rows))
        status = "ok" if faces else "no_faces"
        face_rows = [_face_row(face, video) for face in faces]
        id_rows = [{"video_id": video.video_id, "split": video.split, **r} for r in identity_rows]
        return VideoResult(
            _finish(row, status, None, started),
            face_rows,
            id_rows,
            dict(clock.seconds),
            self.counted.frames - counted_before,
        )

    def _failed(
        self, row: dict[str, Any], error: str, started: float, clock: StageClock, counted_before: int
    ) -> VideoResult:
        return VideoResult(
            _finish(row, "error", error, started),
            seconds=dict(clock.seconds),
            detector_frames=self.counted.frames - counted_before,
        )

    def _faces(
        self, video: VideoTask, clock: StageClock, row: dict[str, Any], group: SourceMemory | None
    ) -> tuple[list[Face], VideoInfo, SourceFaces | None]:
        """The video's faces: detected, or a fake's source's detections reused where they line up."""
        with clock("decode"):
            info = probe(video.path)
        row["detections"] = "detector"
        if group is None:
            return self._chain(video, info, clock, self._detection_provider()), info, None
        if group.video_id == video.video_id:  # the group's source: remember what its fakes reuse
            group.info = info
            remember = SourceFaces(group, remember=True, metric=self._metric)
            return self._chain(video, info, clock, self._detection_provider(), group, remember), info, None
        reason = group.mismatch(info)
        if reason is None:
            sources = self.cfg.sources
            reuse = SourceDetections(
                group,
                self.detect.detector,
                sources.verify_every,
                sources.verify_iou,
                self.cfg.detect.batch_size,
            )
            compare = SourceFaces(
                group, remember=False, metric=self._metric, embed=self.identity, sample=sources.embed_sample
            )
            try:
                faces = self._chain(video, info, clock, reuse, extra=compare)
                group.check_length(info)
                row["detections"] = "source"
                return faces, info, compare
            except Misaligned as exc:
                reason = str(exc)
        row["detections_note"] = f"source {group.video_id} not reused: {reason}"
        return self._chain(video, info, clock, self._detection_provider()), info, None

    @property
    def _metric(self) -> str | None:
        return self.metric if self.identity is not None else None

    def _chain(
        self,
        video: VideoTask,
        info: VideoInfo,
        clock: StageClock,
        detect: DetectionProvider,
        record: SourceMemory | None = None,
        extra: SourceFaces | None = None,
    ) -> list[Face]:
        """The chain: frames (decoded as sampling wants) → detections → crops → per-face stages."""
        sampling = self.cfg.sampling
        selector = make_selector(sampling.strategy, sampling.max_frames, sampling.fallback())
        selector.start(info, video.path)
        run: SampledDetection[Face] = SampledDetection(selector, self.cfg.detect.batch_size)
        stages = self.face_stages()
        if extra is not None and extra.carries_identities:  # it embeds only its sample of faces
            stages = [(name, stage) for name, stage in stages if name != "identity"]
        if extra is not None:  # compared or remembered before `encode` drops the pixels
            stages.insert(len(stages) - 1, ("sources", extra))
        enrich = FaceStages(stages, self.face_batch, clock)
        for batch in run.batches(timed(decoded_frames(video.path, info, selector), clock, "decode")):
            with clock("detect"):
                detections = detect(batch)
            if record is not None:
                record.record(batch, detections)
            for frame, dets in zip(batch, detections, strict=True):
                with clock("crop"):
                    faces = self.cropper(frame, dets)
                run.found(frame.index, len(dets), faces)
            enrich(run.settled())
        with clock("detect"):
            detect.finish()
        enrich(run.finish(), force=True)
        return sorted(enrich.done, key=lambda face: (face.frame, face.face))

    def _detection_provider(self) -> DetectionProvider:
        """The detector for a new video: repeats reused exactly; still, face-less pictures skipped where
        sampling is per_second with a bounded fallback."""
        self.detect.reset()
        self.detect_still.reset()
        sampling = self.cfg.sampling
        skip_still = sampling.strategy == "per_second" and sampling.fallback() is not None
        return DetectorProvider(self.detect_still if skip_still else self.detect)

    def _identities(self, faces: list[Face], compare: SourceFaces | None = None) -> list[dict[str, Any]]:
        """Cluster the video's faces into identities (SPEC §5) and rank them; fills `Face.identity`.
        A reused fake that carried its source's identities over is ranked on those, not clustered."""
        if self.identity is None or not faces:
            return []
        if compare is not None and compare.carries_identities:
            rows = identity_rows(faces, np.array([face.identity for face in faces]))
        else:
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
