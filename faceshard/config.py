"""Build configuration: one validated pydantic tree, loaded from a preset, a file and `--set` overrides.

Everything that changes the output rows lives outside `runtime`; the fingerprint hashes
`BuildConfig.row_affecting()` so that changing, say, a detector threshold is caught on resume.
"""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PRESETS = ("demo", "mintime", "megatron", "deepfakebench")
# What a model is shown of a crop (models/inputs.py): native | timm | isotropic:S | pad:S | pad:max
MODEL_INPUT_PATTERN = r"native|timm|isotropic:[1-9][0-9]*|pad:([1-9][0-9]*|max)"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_pattern(value: str, pattern: str, what: str) -> str:
    if not re.fullmatch(pattern, value):
        raise ValueError(f"{what} {value!r} does not match {pattern}")
    return value


class SamplingConfig(_Section):
    """Which frames are decoded into RGB and shown to the detector (SPEC §1)."""

    strategy: str = Field(
        "per_second", description="per_second | uniform:N | stride:K | consecutive:N | leading:N | all"
    )
    max_frames: int | None = Field(None, ge=1, description="stop after this many sampled frames")
    fallback_frames: Annotated[int, Field(ge=0)] | Literal["all"] = Field(
        2,
        description="per_second: further frames tried, evenly spaced, when a second's first frame has no "
        "face; 'all' = MINTIME's exhaustive search (a face-less video then costs a detection per frame)",
    )

    def fallback(self) -> int | None:
        """`fallback_frames` as `make_selector` takes it: None means every frame of the second."""
        return None if self.fallback_frames == "all" else self.fallback_frames

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        return _check_pattern(
            v, r"per_second|all|(uniform|stride|consecutive|leading):[1-9][0-9]*", "sampling"
        )


class DetectConfig(_Section):
    """Face detector and which detections to keep (SPEC §2)."""

    backend: Literal["mtcnn", "dlib"] = "mtcnn"
    thresholds: tuple[float, float, float] = (0.85, 0.95, 0.95)
    min_face_size: int = Field(20, ge=1)
    factor: float = Field(0.709, gt=0, lt=1)
    detect_scale: float | Literal["auto"] = 0.5
    upsample: int = Field(0, ge=0, le=3, description="dlib HOG upsampling")
    keep: Literal["all", "largest", "first"] = "all"
    min_score: float = Field(0.0, ge=0, le=1)
    batch_size: int = Field(
        4, ge=1, description="frames per detector call; CPU gains nothing past 4, raise it on a GPU"
    )

    @field_validator("detect_scale")
    @classmethod
    def _scale(cls, v: float | str) -> float | str:
        if isinstance(v, float | int) and not 0 < v <= 4:
            raise ValueError("detect_scale must be in (0, 4] or 'auto'")
        return v


class CropConfig(_Section):
    """How a face box becomes a crop, and how the crop is stored (SPEC §3)."""

    method: str = Field(
        "mintime", description="mintime | margin:m | align:S | arcface:S | dlib_rect (Megatron)"
    )
    store: str = Field("native", description="native | isotropic:S | pad:S")
    save: bool = Field(False, description="store encoded crops in the `crop` column")
    format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = Field(95, ge=1, le=100)
    landmarks_model: str | None = Field(
        None,
        description="dlib predictor `align:S` aligns on and checks crops with (DeepfakeBench's "
        "shape_predictor_81_face_landmarks.dat); default the 68-point one of face_recognition_models",
    )

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return _check_pattern(
            v,
            r"mintime|dlib_rect|margin:(0|[0-9]*\.[0-9]+|[0-9]+)|(align|arcface):[1-9][0-9]*",
            "crop.method",
        )

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        return _check_pattern(v, r"native|(isotropic|pad):[1-9][0-9]*", "crop.store")


class IdentityConfig(_Section):
    """Per-video identity clustering (SPEC §5)."""

    enabled: bool = True
    embedder: Literal["dlib", "facenet"] = "dlib"
    weights: str | None = Field(None, description="facenet: local .pt file (default: facenet-pytorch cache)")
    clustering: Literal["mintime", "mutual_knn"] = "mintime"
    threshold: float | None = Field(
        None, description="similarity (cosine) or distance (euclidean); None = the embedder's default"
    )
    metric: Literal["cosine", "euclidean"] | None = None
    min_cluster_ratio: float = Field(0.0, ge=0, le=1)
    knn: int = Field(3, ge=1, description="mutual_knn: neighbours per face in another frame")


class DepthConfig(_Section):
    """Depth Anything maps per crop (SPEC §6)."""

    enabled: bool = False
    model: str = "depth-anything/Depth-Anything-V2-Small-hf"
    input_size: int = Field(518, ge=14)
    save: bool = Field(True, description="store encoded depth maps in the `depth` column")
    batch_size: int = Field(16, ge=1)
    input: str = Field(
        "native", description="what the model sees: native (Megatron) | isotropic:S | pad:S | pad:max"
    )
    normalise: Literal["minmax", "max"] = Field(
        "minmax",
        description="map → uint8: minmax (per crop) | max: uint8(d·255/max(d)) truncated, what transformers "
        "4.44's depth-estimation pipeline gives (Megatron)",
    )
    processor: Literal["torchvision", "pil"] = Field(
        "torchvision",
        description="image processor backend resizing the crop: pil is the resize transformers 4.44's "
        "processor made (Megatron)",
    )
    positions: Literal["size", "scale"] = Field(
        "size",
        description="how DINOv2 resizes its position embeddings for a crop not processed to 518 × 518: "
        "size (transformers 5: to the patch grid) | scale: by the factor (n + 0.1) / 37, what transformers "
        "4.44's model did (Megatron)",
    )

    @field_validator("input")
    @classmethod
    def _input(cls, v: str) -> str:
        if v == "timm":
            raise ValueError("depth.input 'timm' means nothing for Depth Anything; use native")
        return _check_pattern(v, MODEL_INPUT_PATTERN, "depth.input")


class EmbedConfig(_Section):
    """Cached timm embeddings (SPEC §7)."""

    enabled: bool = True
    model: str = "repvit_m0_9.dist_300e_in1k"
    checkpoint: str | None = Field(None, description="local weights file or directory")
    output: Literal["pooled", "tokens"] = "pooled"
    dtype: Literal["float16", "float32"] = "float16"
    depth: bool = Field(False, description="also embed depth maps into `emb_depth`")
    batch_size: int = Field(32, ge=1)
    input: str = Field(
        "timm",
        description="what the model sees: timm (its eval transform: resize, centre crop) | "
        "isotropic:S (MINTIME) | pad:max (Megatron) | pad:S | native",
    )
    normalise: Literal["model", "bgr255", "unit"] = Field(
        "model",
        description="pixels the model gets: model (RGB /255, then its mean/std) | bgr255 (BGR 0-255, no "
        "mean/std: MINTIME's loader and train.py) | unit (RGB /255 only: Megatron's RepVit.forward)",
    )

    @field_validator("input")
    @classmethod
    def _input(cls, v: str) -> str:
        return _check_pattern(v, MODEL_INPUT_PATTERN, "embed.input")


class SourcesConfig(_Section):
    """Source-aware builds (tasks/sources.py): a fake reuses its source's detections when they line up."""

    aware: bool = Field(
        True,
        description="process a source and its fakes (manifest `source`) together in one shard and reuse"
        " the source's detections for every fake that verifies; false detects every video on its own",
    )
    verify_every: int = Field(8, ge=1, description="the detector checks 1 in N of a fake's sampled frames")
    # Measured: MTCNN's box on a face-swapped face sits 0.82-0.92 IoU from the source's box at the same
    # place (synth swaps); half a second of shift drops it to 0.16. 0.9 would refuse most real swaps.
    verify_iou: float = Field(0.6, gt=0, le=1, description="IoU a checked box must reach with the source's")
    manipulated_pixel: float = Field(
        0.03, gt=0, description="identity labelled manipulated above this mean thumbnail difference (0-1)"
    )
    embed_sample: int = Field(
        4,
        ge=0,
        description="a reused fake takes its source's identities by box and runs the identity embedder on"
        " only this many faces per identity (for manip_embed); 0 embeds and clusters every face of the fake",
    )


class RuntimeConfig(_Section):
    """Where and how fast: never changes the rows, so it is not fingerprinted."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_cpus: int | None = Field(None, ge=1, description="CPUs given to the local Ray cluster")
    cpus_per_shard: float = Field(1.0, gt=0)
    gpus_per_shard: float = Field(0.0, ge=0)
    ray_address: str | None = Field(None, description="existing Ray cluster; None starts a local one")
    allow_random_weights: bool = Field(
        False, description="fall back to random init when weights are unreachable (demo only)"
    )
    task_retries: int = Field(2, ge=0)
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="shards submitted to the cluster at once; None = twice the shards it runs at once",
    )
    lease_ttl_s: float = Field(
        60.0,
        gt=0,
        description="another build takes the output over only after it saw this build's heartbeat stop"
        " for this long (raise it where nodes pause longer: VM migrations, long GC pauses)",
    )
    lease_heartbeat_s: float | None = Field(
        None, gt=0, description="seconds between heartbeats; None = a quarter of lease_ttl_s"
    )

    @model_validator(mode="after")
    def _heartbeat_below_ttl(self) -> RuntimeConfig:
        if self.lease_heartbeat_s is not None and self.lease_heartbeat_s >= self.lease_ttl_s:
            raise ValueError(
                f"runtime.lease_heartbeat_s ({self.lease_heartbeat_s}) must be below runtime.lease_ttl_s"
                f" ({self.lease_ttl_s})"
            )
        return self


# Sections/fields that never change rows: how the build runs, and where weights files are located.
ROW_NEUTRAL: dict[str, Any] = {
    "runtime": True,
    "preset": True,
    "shard_size": True,
    "crop": {"landmarks_model"},
    "identity": {"weights"},
    "embed": {"checkpoint"},
    "depth": {"model"},
}


# Row-affecting fields added after outputs were built: at these values they describe the rows those
# outputs already hold, so they are left out of the fingerprint there (older outputs keep theirs).
ADDED_DEFAULTS: dict[str, dict[str, Any]] = {
    "embed": {"normalise": "model"},
    "depth": {"normalise": "minmax", "processor": "torchvision", "positions": "size"},
}


class BuildConfig(_Section):
    """The whole build: one instance is resolved up front and travels to every worker."""

    preset: str = "demo"
    shard_size: int = Field(16, ge=1)
    sampling: SamplingConfig = SamplingConfig()
    detect: DetectConfig = DetectConfig()
    crop: CropConfig = CropConfig()
    identity: IdentityConfig = IdentityConfig()
    depth: DepthConfig = DepthConfig()
    embed: EmbedConfig = EmbedConfig()
    sources: SourcesConfig = SourcesConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    def row_affecting(self) -> dict[str, Any]:
        """The part of the config that changes output rows (hashed into the fingerprint).

        Where weights files live is left out: their content is fingerprinted with the weights, so the
        same file at another path (a moved cache, another machine) needs no --rebuild. `shard_size`
        is left out too: it only sizes the shards of videos not yet committed.
        """
        tree = self.model_dump(mode="json", exclude=ROW_NEUTRAL)
        for section, defaults in ADDED_DEFAULTS.items():
            for name, default in defaults.items():
                if tree.get(section, {}).get(name) == default:
                    del tree[section][name]
        # `align:S` meant ArcFace's points (eye centres, mouth corners) before it became DeepfakeBench's
        # (dlib 37/44/30/49/55, faceless crops dropped): those older rows are `arcface:S` now and keep
        # their fingerprint under that name, while today's `align:S` rows get a new one.
        method = tree["crop"]["method"]
        if method.startswith("arcface:"):
            tree["crop"]["method"] = "align:" + method.partition(":")[2]
        elif method.startswith("align:"):
            tree["crop"]["align_rule"] = "deepfakebench"
        return tree


class ConfigError(ValueError):
    """A config that cannot be used; its message is meant for the user as is."""


def preset_path(name: str) -> Path:
    """The YAML file that defines preset `name`."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"unknown preset {name!r}; {hint}choose one of {', '.join(PRESETS)}")
    return Path(str(resources.files("faceshard") / "presets" / f"{name}.yaml"))


def _parse_value(text: str) -> Any:
    """`--set` values are YAML scalars/lists: `true`, `0.5`, `[0.6,0.7,0.7]`, `uniform:32`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return data


def load_config(
    preset: str = "demo",
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    shard_size: int | None = None,
) -> BuildConfig:
    """Resolve preset → file → `--set key=value` → `--shard-size`, and validate once.

    Raises ConfigError with one readable message listing every bad key or value.
    """
    tree = _read_yaml(preset_path(preset))
    if config_file is not None:
        tree = _merge(tree, _read_yaml(Path(config_file)))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        _set_dotted(tree, key.strip(), _parse_value(raw.strip()))
    if shard_size is not None:
        tree["shard_size"] = shard_size
    tree["preset"] = preset
    return _validate(tree)


def config_from_tree(tree: dict[str, Any]) -> BuildConfig:
    """A (partial) config tree over the preset it names: what deployments and workers pass around."""
    preset = tree.get("preset", "demo")
    return _validate(_merge(_read_yaml(preset_path(preset)), {**tree, "preset": preset}))


def config_keys(model: type[BaseModel] = BuildConfig, prefix: str = "") -> list[str]:
    """Every dotted key `--set` accepts (`detect.thresholds`, `runtime.device`, …)."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys.extend(config_keys(kind, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _leaves(prefix: str, value: Any) -> list[str]:
    """The dotted keys a user wrote under `prefix` (an unknown section arrives as one dict)."""
    if isinstance(value, dict) and value:
        return [k for name, v in value.items() for k in _leaves(f"{prefix}.{name}", v)]
    return [prefix]


def suggest_keys(key: str) -> list[str]:
    """The known dotted keys nearest to a mistyped one: within its section first, then anywhere."""
    known = config_keys()
    section, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == section]
    if section and siblings:
        return [f"{section}.{m}" for m in difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.6)]
    return difflib.get_close_matches(key, known, n=3, cutoff=0.6)


def _problem(err: Any) -> str:
    """One validation error as `key: what` (an unknown key with the nearest known ones)."""
    key = ".".join(str(p) for p in err["loc"]) or "<root>"
    if err["type"] != "extra_forbidden":
        return f"{key}: {err['msg']} (got {err.get('input')!r})"
    problems = []
    for written in _leaves(key, err.get("input")):
        close = suggest_keys(written)
        section = written.rpartition(".")[0]
        in_section = [k for k in config_keys() if k.rpartition(".")[0] == section]
        if close:
            hint = f"did you mean {' or '.join(close)}?"
        elif section and in_section:
            hint = f"{section} has {', '.join(k.rpartition('.')[2] for k in in_section)}"
        else:
            hint = f"settings are {', '.join(sorted({k.split('.')[0] for k in config_keys()}))}"
        problems.append(f"{written}: unknown setting; {hint}")
    return "; ".join(problems)


def _validate(tree: dict[str, Any]) -> BuildConfig:
    try:
        return BuildConfig.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        raise ConfigError(f"invalid config: {problems}") from None
