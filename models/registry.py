"""One registry of named models: where their weights come from, how inputs are prepared, and fingerprints.

Like timm's `default_cfgs`, every model a preset can name has one `ModelCard` here with its default
weights (hub id or file), input size, normalisation and output size, so presets name models and never
repeat their details. The loading helpers below are shared by every model module:

* `resolve_weights(ref)` decides "local path or hub id" and fingerprints what it finds: the sha256 of a
  file, a hash of a directory's weight/config files, or the commit of a cached hub snapshot. The
  fingerprint goes into the build metadata so that changed weights are caught on resume.
* `cached_model(key, factory)` loads a model once per worker process.
* `build_random(...)` is the only way to get random weights: it refuses unless the user allowed it
  (`runtime.allow_random_weights`), and when allowed it seeds the init, warns loudly and marks the result
  `random=True` so that nobody mistakes a demo output for a real one.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

T = TypeVar("T")

RANDOM_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Files that make up a model directory (weights and the configs that change what the weights compute).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".dat", ".npz", ".json")


class WeightsUnavailableError(RuntimeError):
    """Weights could not be found; the message says what was tried and how to provide them."""


@dataclass(frozen=True)
class WeightsInfo:
    """What a loaded model actually runs with: recorded in the output metadata and fingerprinted."""

    name: str  # the model (architecture) name
    source: str  # local path, "hf:<repo id>", or "random"
    fingerprint: str  # "sha256:…", "hf:<repo>@<commit>" or "random:<arch>:seed0"
    random: bool = False


@dataclass(frozen=True)
class ModelCard:
    """A named model: its default weights, input preparation and output size, in one place."""

    name: str
    kind: Literal["identity", "depth", "embedder", "landmarks"]
    weights: str  # default weights: a hub id, or a file name looked up where the card's notes say
    input_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    dim: int | None = None
    license: str = ""
    notes: str = ""
    # Where the weights are looked for, in order (settings, files, caches); nothing is downloaded
    # offline. Missing everywhere: the build refuses before it starts, or runs seeded random weights
    # marked `random` when runtime.allow_random_weights is set.
    looked_for: tuple[str, ...] = ()


MODELS: dict[str, ModelCard] = {}


def register(card: ModelCard) -> ModelCard:
    """Add a card to the registry (one per name)."""
    if card.name in MODELS:
        raise ValueError(f"model {card.name!r} is already registered")
    MODELS[card.name] = card
    return card


def model_card(name: str) -> ModelCard:
    """The card for `name`, or an error listing the registered names."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}") from None


register(
    ModelCard(
        "facenet",
        "identity",
        weights="20180402-114759-vggface2.pt",
        input_size=128,
        mean=(127.5,) * 3,
        std=(128.0,) * 3,
        dim=512,
        license="MIT (facenet-pytorch)",
        notes="InceptionResnetV1 vggface2; file from --set identity.weights or $TORCH_HOME/checkpoints",
        looked_for=(
            "--set identity.weights=/path/to/20180402-114759-vggface2.pt",
            "$TORCH_HOME/checkpoints/20180402-114759-vggface2.pt (TORCH_HOME defaults to ~/.cache/torch)",
            "$TORCH_HOME/hub/checkpoints/20180402-114759-vggface2.pt (torch.hub's cache)",
        ),
    )
)
register(
    ModelCard(
        "dlib",
        "identity",
        weights="dlib_face_recognition_resnet_model_v1.dat",
        dim=128,
        license="CC0 (dlib models)",
        notes="ships in face_recognition_models, with shape_predictor_5_face_landmarks.dat",
        looked_for=("the installed face_recognition_models package's models/ folder",),
    )
)
register(
    ModelCard(
        "depth-anything/Depth-Anything-V2-Small-hf",
        "depth",
        weights="depth-anything/Depth-Anything-V2-Small-hf",
        input_size=518,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        license="Apache-2.0 (Base/Large are CC-BY-NC)",
        notes="keep aspect, multiple of 14, bicubic",
        looked_for=(
            "--set depth.model=/path/to/local/dir (save_pretrained layout)",
            "Hugging Face cache ($HF_HOME/hub): depth-anything/Depth-Anything-V2-Small-hf",
        ),
    )
)
register(
    ModelCard(
        "repvit_m0_9.dist_300e_in1k",
        "embedder",
        weights="timm/repvit_m0_9.dist_300e_in1k",
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dim=384,
        license="Apache-2.0",
        notes="Megatron's RGB and depth embedder; crop_pct 0.95, bicubic",
        looked_for=(
            "--set embed.checkpoint=/path/to/file_or_dir",
            "Hugging Face cache ($HF_HOME/hub): timm/repvit_m0_9.dist_300e_in1k",
        ),
    )
)
register(
    ModelCard(
        "efficientnet_b0",
        "embedder",
        weights="timm/efficientnet_b0.ra_in1k",
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dim=1280,
        license="Apache-2.0",
        notes="MINTIME's backbone; its DFDC-trained checkpoint (efficientnet_pytorch names) is accepted",
        looked_for=(
            "--set embed.checkpoint=/path/to/file_or_dir (MINTIME's own DFDC-trained B0 accepted)",
            "Hugging Face cache ($HF_HOME/hub): timm/efficientnet_b0.ra_in1k",
        ),
    )
)
register(
    ModelCard(
        "dlib-81",
        "landmarks",
        weights="shape_predictor_81_face_landmarks.dat",
        dim=81,
        license="third-party (DeepfakeBench's release; not dlib's own)",
        notes="DeepfakeBench's landmark model; `faceshard export` saves its 81 points, 68 without it; "
        "a build given it (crop.landmarks_model) aligns on it",
        looked_for=(
            "faceshard export --landmarks-model /path/to/shape_predictor_81_face_landmarks.dat",
            "faceshard build --set crop.landmarks_model=/path/to/shape_predictor_81_face_landmarks.dat",
            "<DeepfakeBench checkout (--run-from)>/preprocessing/dlib_tools/",
            "$XDG_CACHE_HOME/faceshard/ (XDG_CACHE_HOME defaults to ~/.cache)",
        ),
    )
)


# ---------------------------------------------------------------------------------------- fingerprints

_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def fingerprint_file(path: str | os.PathLike[str]) -> str:
    """`sha256:<hex>` of a file's bytes, cached per process by (path, size, mtime)."""
    resolved = Path(path).expanduser().resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    cached = _FILE_HASHES.get(key)
    if cached is None:
        digest = hashlib.sha256()
        with resolved.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        cached = _FILE_HASHES[key] = f"sha256:{digest.hexdigest()}"
    return cached


def fingerprint_dir(path: str | os.PathLike[str]) -> str:
    """Hash of a model directory: the names and hashes of its weight and config files."""
    root = Path(path).expanduser().resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise WeightsUnavailableError(
            f"{root} holds no weight or config files ({', '.join(WEIGHT_SUFFIXES)})"
        )
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(root).as_posix()}\0{fingerprint_file(file)}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def combine_fingerprints(parts: Sequence[str]) -> str:
    """One fingerprint for a model made of several files (dlib's recogniser + landmark predictor)."""
    return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), read now: huggingface_hub reads it only at import."""
    import huggingface_hub.constants as hub_constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return hub_constants.is_offline_mode() or any(f.upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


def hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot directory of `repo_id` (its name is the commit), or None; never downloads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        return None


def hub_revision(repo_id: str) -> str | None:
    """The commit hash of the cached snapshot of `repo_id`, or None when it is not cached."""
    snapshot = hub_snapshot(repo_id)
    return snapshot.name if snapshot is not None else None


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def is_local_ref(ref: str) -> bool:
    """Whether `ref` names a local path (existing, or written like a path) rather than a hub id.

    An existing path always wins; otherwise `org/name` and `name` are hub ids, and anything absolute,
    starting with `.`/`~`, with more than one `/`, or ending in a weights suffix is a (missing) local path.
    """
    if Path(ref).expanduser().exists() or Path(ref).suffix in WEIGHT_SUFFIXES:
        return True
    return not _HUB_ID.fullmatch(ref)


def local_version(ref: str | None) -> str | None:
    """Fingerprint of an existing local weights file or directory (None otherwise): part of
    `cached_model` keys, so that weights rewritten in place are reloaded rather than served stale."""
    if ref is None:
        return None
    path = Path(ref).expanduser()
    if path.is_file():
        return fingerprint_file(path)
    if path.is_dir():
        return fingerprint_dir(path)
    return None


def hub_weights_info(repo_id: str, name: str) -> WeightsInfo:
    """WeightsInfo for a model just loaded from the hub by id (the commit comes from the cache)."""
    revision = hub_revision(repo_id) or "unknown-revision"
    return WeightsInfo(name, f"hf:{repo_id}", f"hf:{repo_id}@{revision}")


# ------------------------------------------------------------------------------------- random fallback


def random_weights_info(arch: str) -> WeightsInfo:
    """What a seeded random-init model reports: never confused with real weights."""
    return WeightsInfo(arch, "random", f"random:{arch}:seed{RANDOM_SEED}", random=True)


def unavailable_message(what: str, tried: Sequence[str], how: str) -> str:
    """One readable message: what was missing, every place looked at, and how to provide the weights."""
    return (
        f"no weights for {what}; tried: {'; '.join(tried)}. {how} "
        "(or set runtime.allow_random_weights=true for a demo with random weights)."
    )


def random_weights_told_elsewhere() -> None:
    """No RANDOM WEIGHTS warning from this process from now on: called in a build's worker, whose
    driver says it once per build (the weights' manifest already knows which are random). For the
    process, not a block: models may go on loading on a thread after the call that started them."""
    warnings.filterwarnings("ignore", message="RANDOM WEIGHTS", category=RuntimeWarning)


def build_random(
    arch: str,
    build: Callable[[], T],
    *,
    allow_random: bool,
    tried: Sequence[str],
    how: str,
    what: str | None = None,
    cause: BaseException | None = None,
) -> tuple[T, WeightsInfo]:
    """Random-init `arch` with a fixed seed when allowed; otherwise raise naming what was tried.

    `what` names the weights asked for (default: `arch`). The seed is applied inside a forked RNG so
    that the caller's random state is left untouched.
    """
    what = what or arch
    if not allow_random:
        raise WeightsUnavailableError(unavailable_message(what, tried, how)) from cause
    message = (
        f"RANDOM WEIGHTS: weights for {what} are unreachable (tried: {'; '.join(tried)}); using {arch} "
        f"with a seeded random init (seed {RANDOM_SEED}). Outputs are marked random and are NOT "
        "meaningful features."
    )
    warnings.warn(message, RuntimeWarning, stacklevel=2)  # once: a log line too printed it twice
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = build()
    return model, random_weights_info(arch)


# ------------------------------------------------------------------------------------ per-process cache

_MODEL_CACHE: dict[Hashable, object] = {}
_MODEL_LOCKS: dict[Hashable, threading.Lock] = {}
_REGISTRY_LOCK = threading.Lock()


def cached_model(key: Hashable, factory: Callable[[], T]) -> T:
    """Build `factory()` once per process for `key` (name, weights, device, …); later calls reuse it.

    Each key has its own lock, so two threads asking for the same model load it once and two different
    models load concurrently.
    """
    with _REGISTRY_LOCK:
        if key in _MODEL_CACHE:
            return _MODEL_CACHE[key]  # type: ignore[return-value]
        lock = _MODEL_LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _MODEL_CACHE:
            _MODEL_CACHE[key] = factory()
        return _MODEL_CACHE[key]  # type: ignore[return-value]


def clear_model_cache() -> None:
    """Forget every cached model (tests; freeing memory between builds in one process)."""
    with _REGISTRY_LOCK:
        _MODEL_CACHE.clear()
        _MODEL_LOCKS.clear()


def resolve_device(device: str) -> str:
    """`auto` → cuda when available, else cpu."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
