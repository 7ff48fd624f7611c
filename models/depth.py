"""Depth Anything maps per face crop (SPEC §6, Megatron).

The model and its image processor come from transformers (`AutoModelForDepthEstimation`,
`AutoImageProcessor`): Depth Anything V2 Small by hub id by default, or a local directory written by
`save_pretrained`. The processor resizes each crop keeping its aspect ratio so that both sides are
multiples of 14 near `input_size`, and normalises with ImageNet mean/std.

Batching crops of different aspect ratios: the processor gives each crop its own tensor shape. Padding
them to one shape would change the prediction (the ViT attends over the padding), and squashing them to
a square would change the preprocessing, so crops are grouped by processed shape and each group runs as
its own batches. Square crops (MINTIME's and Megatron's) all share one shape whatever their size, so a
video's crops usually form a single group. The result is the same as calling the model on each crop
alone. Each predicted map is then resized back (bicubic) to ITS OWN crop size — transformers 4.44's
batched pipeline resized every map to the last crop's size, a bug not copied — and made uint8 by
`normalise`: `minmax` per crop (default; a map constant up to float noise becomes zeros rather than
amplified noise), or `max`, what transformers 4.44's depth-estimation pipeline (the one Megatron calls)
returns as its `depth` image: `(d * 255 / d.max()).astype(uint8)`, truncated, in float32.

`processor` picks the image processor's backend: `torchvision` (transformers 5's default) or `pil`,
the PIL bicubic resize transformers 4.44's DPT processor made (Megatron's input to the model).

`positions` picks how the DINOv2 backbone resizes its 37 × 37 position embeddings for a crop whose
processed shape is not 518 × 518 (a non-square crop): `size` (transformers 5: to the patch grid) or
`scale`, the scale factor (n + 0.1) / 37 that transformers 4.44's model used (Megatron's). The two put
the bicubic samples at different places: on such crops the maps differ well beyond float rounding.

What the model is shown is `input_spec` (models/inputs.py): `native` (default; Megatron ran the
pipeline on the plain crop), or a canvas (`isotropic:S`, `pad:S`, `pad:max`); on a canvas the map is
cut back to the crop's place on it before being resized to the crop's size.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from faceshard.models.inputs import Placed, check_input, place
from faceshard.models.pretrained import DEPTH_RANDOM_ARCH
from faceshard.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WeightsInfo,
    build_random,
    cached_model,
    fingerprint_dir,
    hub_offline,
    hub_weights_info,
    is_local_ref,
    local_version,
    model_card,
    resolve_device,
)
from faceshard.records import Face

DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
DEPTH_CARD = model_card(DEFAULT_DEPTH_MODEL)


def depth_anything_processor(
    input_size: int = DEPTH_CARD.input_size or 518, backend: str = "torchvision"
) -> object:
    """The image processor Depth Anything ships with: keep aspect, multiple of 14, bicubic, ImageNet."""
    from transformers import DPTImageProcessor, DPTImageProcessorPil

    return (DPTImageProcessorPil if backend == "pil" else DPTImageProcessor)(
        do_resize=True,
        size={"height": input_size, "width": input_size},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,  # bicubic
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_pad=False,
    )


def _from_pretrained(ref: str, local_only: bool, backend: str) -> tuple[torch.nn.Module, object]:
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    # float32 whatever the checkpoint stores: the same numbers on every device
    model = AutoModelForDepthEstimation.from_pretrained(ref, local_files_only=local_only, dtype=torch.float32)
    try:
        processor = AutoImageProcessor.from_pretrained(ref, local_files_only=local_only, backend=backend)
    except (OSError, ValueError):  # a directory written by model.save_pretrained alone has no processor
        processor = depth_anything_processor(backend=backend)
    return model, processor


def load_depth_model(
    model_ref: str, allow_random: bool, backend: str = "torchvision"
) -> tuple[torch.nn.Module, object, WeightsInfo]:
    """Model, processor (`backend`: torchvision | pil) and weights info for `model_ref`, on the CPU."""
    if is_local_ref(model_ref):
        path = Path(model_ref).expanduser()
        tried = [f"local directory {path}"]
        if path.is_dir():
            model, processor = _from_pretrained(str(path), local_only=True, backend=backend)
            return model, processor, WeightsInfo(model_ref, str(path.resolve()), fingerprint_dir(path))
        cause: BaseException | None = None
    else:
        offline = hub_offline()
        tried = [f"hub id {model_ref!r}" + (" (HF_HUB_OFFLINE set: cache only)" if offline else "")]
        try:
            model, processor = _from_pretrained(model_ref, local_only=offline, backend=backend)
            return model, processor, hub_weights_info(model_ref, model_ref)
        except OSError as exc:  # transformers raises OSError (or a subclass) for unreachable/missing repos
            cause = exc

    hub_id = DEFAULT_DEPTH_MODEL if is_local_ref(model_ref) else model_ref

    def random_model() -> tuple[torch.nn.Module, object]:
        from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

        return DepthAnythingForDepthEstimation(DepthAnythingConfig()), depth_anything_processor(
            backend=backend
        )

    (model, processor), info = build_random(
        DEPTH_RANDOM_ARCH,
        random_model,
        allow_random=allow_random,
        what=model_ref,
        tried=tried,
        how=(
            f"Put the model in the Hugging Face cache (`hf download {hub_id}` on a connected "
            "machine, then copy the cache), or pass a directory written by save_pretrained with "
            "--set depth.model=/path/to/dir"
        ),
        cause=cause,
    )
    return model, processor, info


class DepthEstimator:
    """Stage filling `Face.depth` with a uint8 map the size of `Face.crop`."""

    def __init__(
        self,
        model_ref: str = DEFAULT_DEPTH_MODEL,
        input_size: int = 518,
        device: str = "cpu",
        allow_random: bool = False,
        batch_size: int = 16,
        input_spec: str = "native",
        normalise: str = "minmax",
        processor: str = "torchvision",
        positions: str = "size",
    ) -> None:
        if positions not in ("size", "scale"):
            raise ValueError(f"unknown position interpolation {positions!r}; use size | scale")
        if normalise not in NORMALISERS:
            raise ValueError(f"unknown depth normalisation {normalise!r}; use {' | '.join(NORMALISERS)}")
        if processor not in ("torchvision", "pil"):
            raise ValueError(f"unknown image processor backend {processor!r}; use torchvision | pil")
        self.normalise = normalise
        self.backend = processor
        if input_size < 14:
            raise ValueError("input_size must be at least one 14-pixel patch")
        self.input = check_input(input_spec)
        self.input_size = input_size
        self.device = resolve_device(device)
        self.batch_size = batch_size
        model, self.processor, self.weights = cached_model(
            ("depth", model_ref, local_version(model_ref), self.device, allow_random, processor, positions),
            lambda: self._load(model_ref, allow_random, positions),
        )
        self.model = model

    def _load(
        self, model_ref: str, allow_random: bool, positions: str
    ) -> tuple[torch.nn.Module, object, WeightsInfo]:
        model, processor, info = load_depth_model(model_ref, allow_random, self.backend)
        if positions == "scale":
            embeddings = model.backbone.embeddings  # type: ignore[union-attr]
            embeddings.interpolate_pos_encoding = scaled_positions(embeddings)
        return model.eval().to(self.device), processor, info

    @property
    def fingerprint(self) -> str:
        return self.weights.fingerprint

    def preprocess(self, crops: list[np.ndarray]) -> list[torch.Tensor]:
        """One (3, h, w) tensor per crop, h and w multiples of 14 near `input_size`, aspect kept."""
        kwargs: dict[str, object] = {}
        if self.device != "cpu" and self.backend == "torchvision":
            kwargs["device"] = self.device  # resize on the accelerator
        out = self.processor(  # type: ignore[operator]
            [np.ascontiguousarray(c) for c in crops],
            size={"height": self.input_size, "width": self.input_size},
            input_data_format="channels_last",
            **kwargs,
        )
        return [torch.as_tensor(p) for p in out["pixel_values"]]  # the PIL backend gives numpy arrays

    @torch.inference_mode()
    def predict(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        """uint8 depth maps, each (h, w) of its own crop, normalised per crop (`normalise`)."""
        if not crops:
            return []
        placed = place(crops, self.input)
        pixels = self.preprocess([p.canvas for p in placed])
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, tensor in enumerate(pixels):
            groups[tuple(tensor.shape)].append(index)
        maps: list[np.ndarray | None] = [None] * len(crops)
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                batch = torch.stack([pixels[i] for i in chunk]).to(self.device)
                predicted = self.model(pixel_values=batch).predicted_depth  # (b, H, W)
                for row, index in enumerate(chunk):
                    maps[index] = to_uint8_map(
                        _on_crop(predicted[row], placed[index]), crops[index].shape[:2], self.normalise
                    )
        return maps  # type: ignore[return-value]

    def __call__(self, faces: list[Face]) -> list[Face]:
        missing = [face for face in faces if face.crop is None]
        if missing:
            raise ValueError(f"{len(missing)} faces have no crop: run the cropper first")
        for face, depth in zip(faces, self.predict([face.crop for face in faces]), strict=True):  # type: ignore[misc]
            face.depth = depth
        return faces


def scaled_positions(embeddings: torch.nn.Module) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
    """DINOv2's position embeddings for an input of height × width pixels, resized the way transformers
    4.44 did: bicubic by the scale factor (n + 0.1) / side for n patches a side (transformers 5 resizes
    to n). The grid as trained is kept for a square input of the trained size."""

    def interpolate(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        table = embeddings.position_embeddings  # (1, 1 + side², dim): CLS first
        trained = table.shape[1] - 1
        if tokens.shape[1] - 1 == trained and height == width:
            return table
        side = math.sqrt(trained)
        patch_h, patch_w = embeddings.patch_embeddings.patch_size
        grid = table[:, 1:].reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
        factor = ((height // patch_h + 0.1) / side, (width // patch_w + 0.1) / side)
        grid = F.interpolate(grid.float(), scale_factor=factor, mode="bicubic", align_corners=False)
        grid = grid.to(table.dtype).permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])
        return torch.cat((table[:, :1], grid), dim=1)

    return interpolate


def _on_crop(predicted: torch.Tensor, placed: Placed) -> torch.Tensor:
    """The part of a canvas's prediction that covers the crop (the whole map when there is no canvas)."""
    top, left, height, width = placed.content
    if (top, left, height, width) == (0, 0, *placed.canvas.shape[:2]):
        return predicted
    on_canvas = F.interpolate(
        predicted[None, None].float(), size=placed.canvas.shape[:2], mode="bicubic", align_corners=False
    )[0, 0]
    return on_canvas[top : top + height, left : left + width]


def to_uint8_map(predicted: torch.Tensor, size: tuple[int, int], normalise: str = "minmax") -> np.ndarray:
    """Resize one (H, W) prediction to `size` (bicubic), then to uint8 by `normalise` (minmax | max)."""
    resized = F.interpolate(predicted[None, None].float(), size=size, mode="bicubic", align_corners=False)[
        0, 0
    ]
    return NORMALISERS[normalise](resized)


def _minmax(resized: torch.Tensor) -> np.ndarray:
    size = tuple(resized.shape)
    low, high = resized.min(), resized.max()
    if float(high - low) <= 1e-5 * max(abs(float(high)), abs(float(low))):  # constant up to float noise
        return np.zeros(size, np.uint8)
    scaled = (resized - low) / (high - low) * 255.0
    return scaled.round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def _by_max(resized: torch.Tensor) -> np.ndarray:
    """transformers 4.44 `DepthEstimationPipeline.postprocess`: numpy float32, `* 255 / max`, `astype`."""
    output = resized.cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        return (output * 255 / np.max(output)).astype("uint8")


NORMALISERS = {"minmax": _minmax, "max": _by_max}
