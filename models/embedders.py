"""Cached timm embeddings of face crops and depth maps (SPEC §7).

`Embedder` builds a timm model by name without a classifier (`num_classes=0`), in eval mode. What the
model is shown of a crop is `input` (models/inputs.py), set by each preset to what its pipeline fed:
MINTIME `isotropic:224` (longest side → 224, zero-padded square), Megatron `pad:max` (the run's crops
zero-padded to the largest of them, never resized), or `timm`, the model's own eval transform (resize,
then centre crop: it cuts the edges of the face crop). `normalise` says what the pixels become: `model`,
RGB /255 then the model's own mean/std from its pretrained data config, or `bgr255`, MINTIME's input: its
loader reads crops with `cv2.imread` (BGR) and its train.py hands the backbone `torch.tensor(images)
.float()`, 0–255, no mean/std (deepfakes_dataset.py:257, :339; train.py:341-346), so a MINTIME
checkpoint only ever saw that. Or `unit`, /255 alone: Megatron's
`RepVit.forward` (its preprocessing.py) feeds `img.float() / 255.0` to RepViT without mean/std, so a
Megatron checkpoint only ever saw that. Megatron's trainer runs RepViT in train mode (BatchNorm on the
batch's statistics, updating its running ones): no cache can hold that; eval mode is stored (SPEC §7).

Weights, in order:
1. `checkpoint`: a local file (safetensors, or a torch state dict read with `weights_only=True`, inside
   a `state_dict`/`model` wrapper or not, with or without DDP's `module.` prefix) or a directory holding
   one. MINTIME's own DFDC-trained EfficientNet-B0 is accepted: it was trained with lukemelas'
   efficientnet_pytorch (keys like `efficient_net._blocks.3._expand_conv.weight`), whose TF-style
   "same" padding and BN eps 1e-3 are timm's `tf_efficientnet_b0`; the keys are renamed and that
   architecture is used, so the features match MINTIME's.
2. timm's pretrained weights from the Hugging Face cache (`pretrained=True`); downloaded only when
   online.
3. Seeded random init, only when `allow_random` (demo), reported as `WeightsInfo(random=True)`.

Outputs: the pooled vector (`forward_features` + `forward_head(pre_logits=True)`) or the token grid
(`forward_features` → (h·w, C), 7×7 = 49 tokens at 224 px, what MINTIME's TimeSformer consumes).
The model always computes in float32; results are stored as float16 unless float32 is asked for.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from faceshard.models.inputs import check_input, mintime_sequence, place
from faceshard.models.pretrained import CHECKPOINT_FILES
from faceshard.models.registry import (
    MODELS,
    WeightsInfo,
    WeightsUnavailableError,
    build_random,
    cached_model,
    fingerprint_dir,
    fingerprint_file,
    hub_offline,
    hub_weights_info,
    local_version,
    random_weights_info,
    resolve_device,
)
from faceshard.records import Face

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "repvit_m0_9.dist_300e_in1k"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")


# ------------------------------------------------------------------------------------ checkpoint files


def checkpoint_file(path: Path) -> Path:
    """The weights file of `path`: itself, or the single checkpoint inside a directory."""
    if path.is_file():
        return path
    for name in CHECKPOINT_FILES:
        if (path / name).is_file():
            return path / name
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if len(found) != 1:
        raise WeightsUnavailableError(
            f"checkpoint directory {path} must hold one of {', '.join(CHECKPOINT_FILES)} "
            f"or exactly one {'/'.join(CHECKPOINT_SUFFIXES)} file; found {[p.name for p in found]}"
        )
    return found[0]


def is_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict uses lukemelas' efficientnet_pytorch names (MINTIME's B0)."""
    return "_conv_stem.weight" in state


def efficientnet_pytorch_to_timm(
    state: dict[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch state dict to timm's EfficientNet names.

    efficientnet_pytorch numbers its blocks flat (`_blocks.7`); timm nests them by stage
    (`blocks.2.1`), in the same order, so the i-th flat block is the i-th timm block. Inside a block
    the expansion conv/BN are optional (absent in the first, depthwise-separable block).
    """
    nested = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]  # type: ignore[arg-type]
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    expanded = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_se_reduce": "se.conv_reduce",
        "_se_expand": "se.conv_expand",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    separable = {
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn1",
        "_se_reduce": "se.conv_reduce",
        "_se_expand": "se.conv_expand",
        "_project_conv": "conv_pw",
        "_bn2": "bn2",
    }
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block:
            index, layer, param = int(block[1]), block[2], block[3]
            if index >= len(nested):
                raise ValueError(f"checkpoint block {index} does not exist in {type(model).__name__}")
            names = expanded if f"_blocks.{index}._expand_conv.weight" in state else separable
            renamed[f"{nested[index]}.{names[layer]}.{param}"] = value
        else:
            layer, _, param = key.partition(".")
            renamed[f"{top.get(layer, layer)}.{param}"] = value
    return renamed


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A flat state dict from a checkpoint file, unwrapped the way timm does (`state_dict`, `model`,
    EMA, `module.`), plus MINTIME's `efficient_net.` sub-model prefix."""
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as exc:  # torch.load refuses pickled objects with weights_only=True
        raise WeightsUnavailableError(
            f"cannot read checkpoint {path} as a weights-only state dict: {exc}"
        ) from exc
    prefix = "efficient_net."
    if any(key.startswith(prefix) for key in state):
        state = {key.removeprefix(prefix): v for key, v in state.items() if key.startswith(prefix)}
    return state


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into a headless timm model: every model weight must be there; extra keys (the
    classifier, a wrapper's other parts) are ignored and logged."""
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ValueError(
            f"checkpoint {source} does not fit {model.pretrained_cfg.get('architecture')}: "  # type: ignore[union-attr]
            f"{len(result.missing_keys)} weights missing, e.g. {result.missing_keys[:3]}"
        )
    if result.unexpected_keys:
        log.info(
            "checkpoint %s: ignored %d extra keys, e.g. %s",
            source,
            len(result.unexpected_keys),
            result.unexpected_keys[:3],
        )


# -------------------------------------------------------------------------------------------- loading


def _tf_variant(model_name: str) -> str:
    """`efficientnet_b0[.tag]` → `tf_efficientnet_b0`: the architecture efficientnet_pytorch weights need."""
    base = model_name.split(".")[0]
    return base if base.startswith("tf_") else f"tf_{base}"


def load_embedding_model(
    model_name: str, checkpoint: str | None, allow_random: bool
) -> tuple[torch.nn.Module, WeightsInfo]:
    """A headless timm model in eval mode on the CPU, with the weights it runs with (see module docstring)."""
    import timm

    if not timm.is_model(model_name):
        raise ValueError(f"unknown timm model {model_name!r} (see timm.list_models())")
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.exists():
            raise WeightsUnavailableError(
                f"embedding checkpoint {path} does not exist; fix --set embed.checkpoint or unset it to use "
                f"timm's pretrained {model_name}"
            )
        file = checkpoint_file(path)
        state = read_checkpoint(file)
        fingerprint = fingerprint_file(path) if path.is_file() else fingerprint_dir(path)
        arch = model_name
        if is_efficientnet_pytorch(state):
            arch = _tf_variant(model_name)
            log.info("%s holds efficientnet_pytorch weights (MINTIME's B0): using timm's %s", file, arch)
        model = timm.create_model(arch, pretrained=False, num_classes=0)
        if is_efficientnet_pytorch(state):
            state = efficientnet_pytorch_to_timm(state, model)
        load_weights(model, state, str(file))
        return model.eval(), WeightsInfo(arch, str(path.resolve()), fingerprint)

    pretrained_cfg = timm.models.get_pretrained_cfg(model_name)
    hub_id = pretrained_cfg.hf_hub_id if pretrained_cfg is not None else None
    tried: list[str] = []
    cause: BaseException | None = None
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        cached = [try_to_load_from_cache(hub_id, name) for name in CHECKPOINT_FILES]
        cached_file = next((c for c in cached if isinstance(c, str)), None)
        offline = hub_offline()
        tried.append(f"hub id {hub_id!r}" + (" (HF_HUB_OFFLINE set: cache only)" if offline else ""))
        if cached_file is not None or not offline:
            overlay = {"file": cached_file} if cached_file is not None else {}
            try:
                model = timm.create_model(
                    model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay
                )
                return model.eval(), hub_weights_info(hub_id, model_name)
            except Exception as exc:  # timm/huggingface_hub raise many kinds when the hub is unreachable
                cause = exc
    else:
        tried.append(f"timm has no hub weights for {model_name!r}")

    model, info = build_random(
        model_name,
        lambda: timm.create_model(model_name, pretrained=False, num_classes=0),
        allow_random=allow_random,
        tried=tried,
        how=(
            f"Put timm's weights in the Hugging Face cache (`hf download {hub_id}` on a connected "
            "machine, then copy the cache), or pass a local file with --set embed.checkpoint=/path/to/file"
        ),
        cause=cause,
    )
    return model.eval(), info


def embed_weights(model_name: str, checkpoint: str | None, allow_random: bool) -> WeightsInfo:
    """What `Embedder(model_name, checkpoint)` will run with, decided from files where that is enough
    (the checkpoint's content hash, the cached hub revision, or `random`); the loader is called only
    to download (online, not cached) or to raise its error naming what was tried."""
    import timm

    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if path.exists():
            arch = model_name
            if is_efficientnet_pytorch(read_checkpoint(checkpoint_file(path))):
                arch = _tf_variant(model_name)
            fingerprint = fingerprint_file(path) if path.is_file() else fingerprint_dir(path)
            return WeightsInfo(arch, str(path.resolve()), fingerprint)
    elif timm.is_model(model_name):
        pretrained_cfg = timm.models.get_pretrained_cfg(model_name)
        hub_id = pretrained_cfg.hf_hub_id if pretrained_cfg is not None else None
        if hub_id:
            from huggingface_hub import try_to_load_from_cache

            if any(isinstance(try_to_load_from_cache(hub_id, name), str) for name in CHECKPOINT_FILES):
                return hub_weights_info(hub_id, model_name)
        if allow_random and (hub_id is None or hub_offline()):
            return random_weights_info(model_name)
    return load_embedding_model(model_name, checkpoint, allow_random)[1]


class Embedder:
    """A timm model with its own preprocessing; `embed` images, or run as a stage on faces.

    As a stage, `embedder(faces)` fills `Face.emb_rgb` (pooled) or `Face.tokens` (tokens) from the
    crops, and `embedder.embed_depth(faces)` fills `Face.emb_depth` (always pooled) from `Face.depth`
    replicated to 3 channels.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_EMBEDDER,
        checkpoint: str | None = None,
        output: Literal["pooled", "tokens"] = "pooled",
        dtype: Literal["float16", "float32"] = "float16",
        device: str = "cpu",
        allow_random: bool = False,
        batch_size: int = 32,
        input_spec: str = "timm",
        normalise: str = "model",
    ) -> None:
        from timm.data import create_transform, resolve_data_config

        if normalise not in ("model", "bgr255", "unit"):
            raise ValueError(f"normalise must be 'model', 'bgr255' or 'unit', got {normalise!r}")
        if normalise != "model" and input_spec == "timm":
            raise ValueError(
                f"normalise {normalise!r} needs a canvas input (isotropic:S, pad:S, pad:max, native)"
            )
        self.normalise = normalise

        if output not in ("pooled", "tokens"):
            raise ValueError(f"output must be 'pooled' or 'tokens', got {output!r}")
        self.input = check_input(input_spec)
        if output == "tokens" and self.input.startswith(("pad", "native")):
            raise ValueError(
                f"tokens need one canvas size for every face (a 7×7 grid): use input isotropic:224 or "
                f"timm, not {input_spec!r}"
            )
        self.model_name = model_name
        self.output = output
        self.dtype = np.dtype(dtype)
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.model, self.weights = cached_model(
            ("embedder", model_name, checkpoint, local_version(checkpoint), self.device, allow_random),
            lambda: self._load(model_name, checkpoint, allow_random),
        )
        self.data_config = resolve_data_config({}, model=self.model)
        self.transform = create_transform(**self.data_config)
        self._mean = torch.tensor(self.data_config["mean"], dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.data_config["std"], dtype=torch.float32).view(3, 1, 1)
        self.pooled_dim = int(self.model.num_features)  # type: ignore[arg-type]
        card = MODELS.get(model_name)
        if card is not None and card.dim is not None and card.dim != self.pooled_dim:
            raise ValueError(f"{model_name} gives {self.pooled_dim}-d features, its card says {card.dim}")

    def _load(
        self, model_name: str, checkpoint: str | None, allow_random: bool
    ) -> tuple[torch.nn.Module, WeightsInfo]:
        model, info = load_embedding_model(model_name, checkpoint, allow_random)
        return model.to(self.device), info

    @property
    def fingerprint(self) -> str:
        return self.weights.fingerprint

    @property
    def dim(self) -> int:
        """Channels per face vector (pooled) or per token (tokens)."""
        return self.pooled_dim

    def canvases(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """The uint8 images the model is shown before normalisation (`timm`: as given, it transforms)."""
        return [placed.canvas for placed in place(images, self.input)]

    def preprocess(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """One (3, h, w) float tensor per (h, w, 3) uint8 RGB image, as the model is fed (`normalise`)."""
        if self.input == "timm":
            return [self.transform(Image.fromarray(np.ascontiguousarray(img))) for img in images]
        if self.normalise == "bgr255":  # MINTIME: BGR channel order, 0–255 floats
            return [
                torch.from_numpy(np.ascontiguousarray(canvas[:, :, ::-1])).permute(2, 0, 1).float()
                for canvas in self.canvases(images)
            ]
        unit = [
            torch.from_numpy(np.ascontiguousarray(canvas)).permute(2, 0, 1).float() / 255
            for canvas in self.canvases(images)
        ]
        if self.normalise == "unit":
            return unit
        return [(tensor - self._mean) / self._std for tensor in unit]

    @torch.inference_mode()
    def embed(
        self, images: list[np.ndarray], output: Literal["pooled", "tokens"] | None = None
    ) -> np.ndarray:
        """(n, C) pooled vectors, or (n, h·w, C) tokens (49 at 224 px), in the configured dtype."""
        output = output or self.output
        if not images:
            shape = (0, self.pooled_dim) if output == "pooled" else (0, 0, self.pooled_dim)
            return np.zeros(shape, self.dtype)
        tensors = self.preprocess(images)  # all at once: `pad:max` sizes the canvas over the whole call
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)  # `pad:S` canvases can differ
        for index, tensor in enumerate(tensors):
            by_shape[tuple(tensor.shape)].append(index)
        results: list[np.ndarray] = [np.empty(0)] * len(images)
        for members in by_shape.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                batch = torch.stack([tensors[i] for i in chunk]).to(self.device)
                features = self.model.forward_features(batch)  # type: ignore[operator]
                if output == "pooled":
                    result = self.model.forward_head(features, pre_logits=True)  # type: ignore[operator]
                else:
                    result = features.flatten(2).transpose(1, 2)  # (b, C, h, w) → (b, h·w, C)
                for row, index in zip(result.float().cpu().numpy().astype(self.dtype), chunk, strict=True):
                    results[index] = row
        return np.stack(results)

    def __call__(self, faces: list[Face]) -> list[Face]:
        crops = [face.crop for face in faces]
        if any(crop is None for crop in crops):
            raise ValueError("faces without a crop: run the cropper first")
        vectors = self.embed(crops)  # type: ignore[arg-type]
        for face, vector in zip(faces, vectors, strict=True):
            if self.output == "pooled":
                face.emb_rgb = vector
            else:
                face.tokens = vector
        return faces

    def embed_depth(self, faces: list[Face]) -> list[Face]:
        """Stage filling `Face.emb_depth` (pooled) from each depth map replicated to 3 channels."""
        depths = [face.depth for face in faces]
        if any(depth is None for depth in depths):
            raise ValueError("faces without a depth map: run the depth stage first")
        images = [np.repeat(depth[:, :, None], 3, axis=2) for depth in depths]  # type: ignore[index]
        for face, vector in zip(faces, self.embed(images, output="pooled"), strict=True):
            face.emb_depth = vector
        return faces


def mintime_sequence_tokens(embedder: Embedder, slots: list[np.ndarray | None]) -> np.ndarray:
    """MINTIME's backbone output for one sample's slots, (F, C, h, w) float32 like `forward["x"]`.

    The cached tokens are each face's own `isotropic:S` canvas; MINTIME's loader pads every slot by the
    first slot's amounts and squashes the rest (`mintime_sequence`). This re-embeds a sample's slot crops
    (RGB, in slot order, `None` for padding) that way, with an embedder set up as the `mintime` preset's.
    """
    name, _, arg = embedder.input.partition(":")
    if name != "isotropic":
        raise ValueError(f"MINTIME's sequence canvases need an isotropic:S embedder, not {embedder.input!r}")
    tokens = embedder.embed(mintime_sequence(slots, int(arg)), output="tokens")  # (F, h·w, C)
    side = round(tokens.shape[1] ** 0.5)
    return np.ascontiguousarray(tokens.astype(np.float32).transpose(0, 2, 1)).reshape(
        len(slots), -1, side, side
    )
