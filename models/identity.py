"""Identity embedders (SPEC §5): one vector per face crop, compared within a video to cluster people.

* `facenet` (MINTIME): facenet-pytorch InceptionResnetV1 trained on VGGFace2. The crop is resized to
  128×128 (non-isotropic, PIL bilinear, as MINTIME's torchvision `Resize` on PIL images), kept RGB,
  standardised as `(x − 127.5) / 128`, and the 512-d output is L2-normalised. Compared by cosine
  similarity; MINTIME's threshold is 0.45. The weights are read from a local file; facenet-pytorch's
  own `pretrained=` would download from GitHub, so the state dict is loaded here with
  `torch.load(weights_only=True)` and a missing file is an error naming every path looked at.
* `dlib` (offline default): dlib's ResNet face recogniser with its 5-point landmark predictor, both
  shipped in `face_recognition_models`. 128-d descriptors compared by Euclidean distance; 0.6 is
  dlib's usual operating point. dlib aligns the chip; the network runs in torch from dlib's own file
  (models/dlib_resnet.py), batched and on CPU or CUDA, matching dlib's descriptors to float rounding.

Every embedder is a stage `embedder(faces) -> faces` filling `Face.id_embedding` (float32), with
`.metric`, `.default_threshold`, `.dim` and `.weights` (a `WeightsInfo`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from faceshard.config import IdentityConfig
from faceshard.models.pretrained import torch_home
from faceshard.models.registry import (
    WeightsInfo,
    WeightsUnavailableError,
    build_random,
    cached_model,
    combine_fingerprints,
    fingerprint_file,
    model_card,
    random_weights_info,
    resolve_device,
)
from faceshard.records import Face

if TYPE_CHECKING:  # torch is imported where models load: the driver fingerprints files without it
    import torch

    from faceshard.models.dlib_resnet import DlibFaceResNet

FACENET = model_card("facenet")
DLIB = model_card("dlib")
DLIB_SHAPE_PREDICTOR = "shape_predictor_5_face_landmarks.dat"


class IdentityEmbedder(Protocol):
    """What the pipeline needs from an identity embedder."""

    metric: str
    default_threshold: float
    dim: int
    weights: WeightsInfo

    def embed(self, faces: list[Face]) -> np.ndarray: ...

    def __call__(self, faces: list[Face]) -> list[Face]: ...


def _fill(faces: list[Face], embeddings: np.ndarray) -> list[Face]:
    for face, embedding in zip(faces, embeddings, strict=True):
        face.id_embedding = embedding
    return faces


def _require_crop(face: Face) -> np.ndarray:
    if face.crop is None:
        raise ValueError(f"face {face.face} of frame {face.frame} has no crop: run the cropper first")
    return face.crop


# --------------------------------------------------------------------------------------------- FaceNet


def facenet_weight_candidates(weights: str | None) -> list[Path]:
    """Where the vggface2 state dict is looked for: the configured file, else facenet-pytorch's cache.

    facenet-pytorch caches its download at `$TORCH_HOME/checkpoints/<file>`; torch.hub's own cache
    (`$TORCH_HOME/hub/checkpoints`) is also accepted for files fetched with torch.hub. Both are read
    from the environment as those libraries read it, without importing them (a no-op build's check).
    """
    if weights:
        return [Path(weights).expanduser()]
    home = torch_home()
    return [home / "checkpoints" / FACENET.weights, home / "hub" / "checkpoints" / FACENET.weights]


def facenet_weights_file(weights: str | None) -> Path:
    """The vggface2 state dict to load, or an error naming every place looked at."""
    candidates = facenet_weight_candidates(weights)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        looked = ", ".join(str(p) for p in candidates)
        raise WeightsUnavailableError(
            f"FaceNet (InceptionResnetV1 vggface2) weights not found; looked for: {looked}. "
            f"Download {FACENET.weights} from facenet-pytorch's releases and pass it with "
            "--set identity.weights=/path/to/file, or place it in $TORCH_HOME/checkpoints/; "
            "nothing is downloaded. The dlib embedder (identity.embedder=dlib) runs offline "
            "(or set runtime.allow_random_weights=true for a demo with random weights)."
        )
    return path


def facenet_weights(weights: str | None, allow_random: bool = False) -> WeightsInfo:
    """The file's content hash (never its location: the same file elsewhere is the same weights), or
    `random` when the file is missing and random weights are allowed."""
    try:
        path = facenet_weights_file(weights)
    except WeightsUnavailableError:
        if allow_random:
            return random_weights_info("facenet")
        raise
    return WeightsInfo("facenet", str(path.resolve()), fingerprint_file(path))


def facenet_preprocess(crops: list[np.ndarray]) -> torch.Tensor:
    """SPEC §5: 128×128 non-isotropic PIL bilinear resize, RGB, (x − 127.5) / 128, NCHW float32."""
    import torch

    size = FACENET.input_size or 128
    resized = np.stack(
        [np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR)) for crop in crops]
    )
    pixels = torch.from_numpy(resized).permute(0, 3, 1, 2).float()
    return (pixels - FACENET.mean[0]) / FACENET.std[0]  # type: ignore[index]


def _load_facenet(path: Path, device: str) -> torch.nn.Module:
    import torch
    from facenet_pytorch import InceptionResnetV1

    model = InceptionResnetV1(pretrained=None, classify=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    # The vggface2 file carries the 8631-class training head; embeddings never use it.
    state = {
        k.removeprefix("module."): v
        for k, v in state.items()
        if not k.startswith(("logits.", "module.logits."))
    }
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)


def _random_facenet(weights: str | None, device: str) -> tuple[torch.nn.Module, WeightsInfo]:
    """Seeded random InceptionResnetV1, warned about and marked random (runtime.allow_random_weights)."""
    from facenet_pytorch import InceptionResnetV1

    model, info = build_random(
        "facenet",
        lambda: InceptionResnetV1(pretrained=None, classify=False),
        allow_random=True,
        tried=[str(p) for p in facenet_weight_candidates(weights)],
        how=f"Put {FACENET.weights} in $TORCH_HOME/checkpoints/ or pass --set identity.weights=FILE",
        what="FaceNet (InceptionResnetV1 vggface2)",
    )
    return model.eval().to(device), info


class FaceNetEmbedder:
    """MINTIME's identity embedder: L2-normalised 512-d InceptionResnetV1 (vggface2), batched."""

    metric = "cosine"
    default_threshold = 0.45
    dim = FACENET.dim or 512

    def __init__(
        self,
        weights: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        allow_random: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.weights = facenet_weights(weights, allow_random)
        if self.weights.random:
            self.model, _ = cached_model(
                ("facenet", "random", self.device),
                lambda: _random_facenet(weights, self.device),
            )
            return
        path = facenet_weights_file(weights)
        self.model = cached_model(
            ("facenet", str(path.resolve()), self.weights.fingerprint, self.device),
            lambda: _load_facenet(path, self.device),
        )

    @property
    def fingerprint(self) -> str:
        return self.weights.fingerprint

    def embed_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        """(n, 512) float32, unit length."""
        import torch

        out = np.zeros((len(crops), self.dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                batch = facenet_preprocess(crops[start : start + self.batch_size]).to(self.device)
                out[start : start + len(batch)] = self.model(batch).float().cpu().numpy()
        return out

    def embed(self, faces: list[Face]) -> np.ndarray:
        return self.embed_crops([_require_crop(face) for face in faces])

    def __call__(self, faces: list[Face]) -> list[Face]:
        return _fill(faces, self.embed(faces))


# ------------------------------------------------------------------------------------------------ dlib


def dlib_models_dir() -> Path:
    """`face_recognition_models/models/`, found without importing the package (it needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(
            "dlib identity models not found: the face_recognition_models package is not installed "
            "(it ships dlib_face_recognition_resnet_model_v1.dat); install the project's dependencies"
        )
    return Path(spec.submodule_search_locations[0]) / "models"


def dlib_model_files() -> tuple[Path, Path]:
    """The recogniser and its 5-point landmark predictor, or an error naming the missing files."""
    models_dir = dlib_models_dir()
    recogniser, predictor = models_dir / DLIB.weights, models_dir / DLIB_SHAPE_PREDICTOR
    missing = [str(p) for p in (recogniser, predictor) if not p.is_file()]
    if missing:
        raise WeightsUnavailableError(
            f"dlib identity model files not found: {', '.join(missing)}; reinstall face_recognition_models"
        )
    return recogniser, predictor


def dlib_identity_weights() -> WeightsInfo:
    """Both files' content hashes, combined."""
    recogniser, predictor = dlib_model_files()
    fingerprint = combine_fingerprints([fingerprint_file(recogniser), fingerprint_file(predictor)])
    return WeightsInfo("dlib", str(recogniser.parent), fingerprint)


def _load_dlib(recogniser: Path, predictor: Path, device: str) -> tuple[DlibFaceResNet, object]:
    import dlib

    from faceshard.models.dlib_resnet import load_dlib_resnet

    return load_dlib_resnet(recogniser).to(device), dlib.shape_predictor(str(predictor))


class DlibEmbedder:
    """dlib's 128-d face descriptor, computed on the crop with the detection box in crop coordinates.

    As dlib's `compute_face_descriptor`: the 5-point landmarks and the aligned 150×150 chip (padding
    0.25) come from dlib; the ResNet runs in torch with dlib's weights (models/dlib_resnet.py), batched
    and on `device`, ~20× faster on one CPU thread than dlib-bin's unbatched, BLAS-less C++.
    """

    metric = "euclidean"
    default_threshold = 0.6
    dim = DLIB.dim or 128

    def __init__(self, device: str = "cpu", batch_size: int | None = None) -> None:
        recogniser, predictor = dlib_model_files()
        self.device = resolve_device(device)
        # On one CPU thread 16 chips a batch ran fastest (4.6 ms a face; 5.5 at 32 and 64, 13 at 1).
        self.batch_size = batch_size or (16 if self.device == "cpu" else 128)
        self.weights = dlib_identity_weights()
        self.model, self.predictor = cached_model(
            ("dlib-identity", self.weights.source, self.weights.fingerprint, self.device),
            lambda: _load_dlib(recogniser, predictor, self.device),
        )

    @property
    def fingerprint(self) -> str:
        return self.weights.fingerprint

    def chips(self, crops: list[np.ndarray], boxes: list[np.ndarray | None]) -> np.ndarray:
        """(n, 150, 150, 3) uint8 aligned chips: dlib's landmarks, then `dlib.get_face_chip`."""
        import dlib

        from faceshard.models.dlib_resnet import CHIP_PADDING, CHIP_SIZE

        out = np.zeros((len(crops), CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
        for i, (crop, box) in enumerate(zip(crops, boxes, strict=True)):
            image = np.ascontiguousarray(crop, dtype=np.uint8)
            shape = self.predictor(image, dlib_rectangle(box, image.shape))  # type: ignore[operator]
            out[i] = dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
        return out

    def embed_crops(self, crops: list[np.ndarray], boxes: list[np.ndarray | None]) -> np.ndarray:
        """(n, 128) float32; a missing box means the face fills the crop."""
        import torch

        out = np.zeros((len(crops), self.dim), np.float32)
        with torch.inference_mode(), ieee_convolutions():
            for start in range(0, len(crops), self.batch_size):
                stop = start + self.batch_size
                chips = torch.from_numpy(self.chips(crops[start:stop], boxes[start:stop])).to(self.device)
                out[start : start + len(chips)] = self.model(chips).float().cpu().numpy()
        return out

    def embed(self, faces: list[Face]) -> np.ndarray:
        return self.embed_crops([_require_crop(face) for face in faces], [face.box_in_crop for face in faces])

    def __call__(self, faces: list[Face]) -> list[Face]:
        return _fill(faces, self.embed(faces))


@contextmanager
def ieee_convolutions() -> Iterator[None]:
    """Full float32 cuDNN convolutions while inside: torch's default TF32 would move dlib's
    descriptors by ~1e-3 on CUDA; they should match the CPU's to float rounding."""
    import torch

    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def dlib_rectangle(box: np.ndarray | None, shape: tuple[int, ...]) -> object:
    """A dlib rectangle for a float (x1, y1, x2, y2) box in crop pixels; the whole crop when None."""
    import dlib

    if box is None:
        return dlib.rectangle(0, 0, shape[1] - 1, shape[0] - 1)
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    return dlib.rectangle(x1, y1, x2, y2)


# -------------------------------------------------------------------------------------------- registry

IDENTITY_EMBEDDERS: dict[str, Callable[[IdentityConfig, str, bool], IdentityEmbedder]] = {
    "facenet": lambda cfg, device, allow_random: FaceNetEmbedder(
        cfg.weights, device, allow_random=allow_random
    ),
    "dlib": lambda cfg, device, allow_random: DlibEmbedder(device),
}


IDENTITY_CLASSES: dict[str, type[FaceNetEmbedder] | type[DlibEmbedder]] = {
    "facenet": FaceNetEmbedder,
    "dlib": DlibEmbedder,
}


def identity_weights(cfg: IdentityConfig, allow_random: bool = False) -> WeightsInfo:
    """What `build_identity_embedder(cfg)` will run with, from the files alone (no model loaded)."""
    if cfg.embedder == "facenet":
        return facenet_weights(cfg.weights, allow_random)
    return dlib_identity_weights()


def build_identity_embedder(
    cfg: IdentityConfig, device: str = "cpu", allow_random: bool = False
) -> IdentityEmbedder:
    """The identity embedder named by `cfg.embedder`, with its weights loaded once per process
    (FaceNet: seeded random init, marked random, when its file is missing and `allow_random`)."""
    try:
        factory = IDENTITY_EMBEDDERS[cfg.embedder]
    except KeyError:
        raise ValueError(
            f"unknown identity embedder {cfg.embedder!r}; choose one of {', '.join(IDENTITY_EMBEDDERS)}"
        ) from None
    return factory(cfg, device, allow_random)
