"""Megatron's depth maps are what transformers 4.44.2 computes: the rules it differs from transformers 5 by.

Measured in issue #20: on the same crops and the same weights, transformers 5.23 and 4.44.2 agree to float
rounding (relative 7e-7) wherever the processed crop is 518 × 518, and ±1 lands on a few pixels whose
d·255/max sits on an integer. On non-square crops they disagree by up to 7 %. This is not rounding: DINOv2
resizes its position embeddings another way (`depth.positions`). The oracles below are transcribed from
transformers 4.44.2 (the version in Megatron's environment), never from faceshard:

- models/dinov2/modeling_dinov2.py:76-109 — `Dinov2Embeddings.interpolate_pos_encoding`, called at :126;
- pipelines/depth_estimation.py:102-109 — `postprocess` (tests/oracles.py `transformers_444_depth`).
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch
from oracles import transformers_444_depth
from test_depth import INPUT_SIZE, save_tiny
from torch import nn

from faceshard.models import registry
from faceshard.models.depth import DepthEstimator, scaled_positions, to_uint8_map


def interpolate_pos_encoding_444(
    position_embeddings: torch.Tensor, patch_size: int, embeddings: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """modeling_dinov2.py:76-109 (transformers 4.44.2), `self.` fields passed in."""
    num_patches = embeddings.shape[1] - 1
    num_positions = position_embeddings.shape[1] - 1
    if num_patches == num_positions and height == width:
        return position_embeddings
    class_pos_embed = position_embeddings[:, 0]
    patch_pos_embed = position_embeddings[:, 1:]
    dim = embeddings.shape[-1]
    height = height // patch_size
    width = width // patch_size
    height, width = height + 0.1, width + 0.1
    patch_pos_embed = patch_pos_embed.reshape(
        1, int(math.sqrt(num_positions)), int(math.sqrt(num_positions)), dim
    )
    patch_pos_embed = patch_pos_embed.permute(0, 3, 1, 2)
    target_dtype = patch_pos_embed.dtype
    patch_pos_embed = nn.functional.interpolate(
        patch_pos_embed.to(dtype=torch.float32),
        scale_factor=(float(height / math.sqrt(num_positions)), float(width / math.sqrt(num_positions))),
        mode="bicubic",
        align_corners=False,
    ).to(dtype=target_dtype)
    if int(height) != patch_pos_embed.shape[-2] or int(width) != patch_pos_embed.shape[-1]:
        raise ValueError("Width or height does not match with the interpolated position embeddings")
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    registry.clear_model_cache()


def test_position_embeddings_are_resized_by_transformers_444_s_scale_factor() -> None:
    rng = np.random.default_rng(44)
    for side in (4, 37):  # the tiny test model's grid, Depth Anything V2's (518 / 14)
        dim = 8
        table = torch.from_numpy(rng.standard_normal((1, 1 + side * side, dim)).astype(np.float32))
        module = nn.Module()
        module.position_embeddings = nn.Parameter(table)
        module.patch_embeddings = nn.Module()
        module.patch_embeddings.patch_size = (14, 14)
        ours = scaled_positions(module)
        for _ in range(40):
            rows, cols = int(rng.integers(1, 2 * side)), int(rng.integers(1, 2 * side))
            if rng.random() < 0.2:
                rows = cols = side  # the trained grid: kept as it is
            height, width = rows * 14 + int(rng.integers(0, 14)), cols * 14 + int(rng.integers(0, 14))
            tokens = torch.zeros(1, 1 + rows * cols, dim)
            expected = interpolate_pos_encoding_444(table, 14, tokens, height, width)
            got = ours(tokens, height, width)
            assert got.shape == expected.shape == (1, 1 + rows * cols, dim)
            np.testing.assert_array_equal(got.detach().numpy(), expected.detach().numpy())
            # transformers 5 resizes to the grid instead: other samples, except where nothing is resized
            resized = nn.functional.interpolate(
                table[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2),
                size=(rows, cols),
                mode="bicubic",
                align_corners=False,
            )
            if (rows, cols) != (side, side):
                assert not np.allclose(
                    resized.permute(0, 2, 3, 1).reshape(1, -1, dim).numpy(), expected[:, 1:].detach().numpy()
                )


def test_megatron_preset_maps_non_square_crops_as_transformers_444(tmp_path: Path) -> None:
    """The whole model with 4.44.2's interpolation in place of transformers 5's gives our maps exactly."""
    model = save_tiny(tmp_path, seed=3)
    table = model.backbone.embeddings.position_embeddings

    def legacy(embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return interpolate_pos_encoding_444(table, 14, embeddings, height, width)

    model.backbone.embeddings.interpolate_pos_encoding = legacy
    rng = np.random.default_rng(7)
    crops = [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((50, 80), (90, 40), (64, 64), (37, 61))
    ]
    scale = DepthEstimator(str(tmp_path), INPUT_SIZE, normalise="max", processor="pil", positions="scale")
    size = DepthEstimator(str(tmp_path), INPUT_SIZE, normalise="max", processor="pil", positions="size")
    differs = 0
    for crop, ours, current in zip(crops, scale.predict(crops), size.predict(crops), strict=True):
        pixels = scale.preprocess([crop])[0][None]
        with torch.no_grad():
            predicted = model(pixel_values=pixels).predicted_depth
        np.testing.assert_array_equal(ours, transformers_444_depth(predicted, (crop.shape[1], crop.shape[0])))
        if tuple(pixels.shape[-2:]) == (INPUT_SIZE, INPUT_SIZE):
            np.testing.assert_array_equal(ours, current)  # square: nothing resized either way
        else:
            differs += not np.array_equal(ours, current)
    assert differs >= 2
    with pytest.raises(ValueError, match="position interpolation"):
        DepthEstimator(str(tmp_path), INPUT_SIZE, positions="nearest")


def test_uint8_rule_truncates_near_zero_and_negative_values_as_transformers_444() -> None:
    """postprocess casts d·255/max with astype("uint8"): truncation toward zero, no rounding or clamping."""
    rng = np.random.default_rng(9)
    edges = np.array(
        [
            255.0,
            0.0,
            1e-7,
            -1e-7,
            -0.5,
            -0.9999973,
            0.99999994,
            1.0,
            45.9999847,
            46.0000076,
            254.99998,
            128.5,
        ],
        np.float32,
    )
    for _ in range(60):
        h, w = int(rng.integers(3, 30)), int(rng.integers(3, 30))
        scale = float(rng.uniform(1e-7, 30.0))  # the tiny random model predicts ~1e-7; real ones ~1…30
        values = rng.gamma(2.0, 40.0, (h, w)).astype(np.float32)
        values[rng.random((h, w)) < 0.2] = 0.0  # the head's ReLU zeros: bicubic then undershoots below zero
        flat = values.reshape(-1)
        picks = rng.choice(flat.size, size=min(flat.size, edges.size), replace=False)
        flat[picks] = edges[: picks.size]
        flat[picks[0]] = 255.0  # the max: d·255/max is then d itself (up to the float scale)
        predicted = torch.from_numpy(values * scale)
        for size in ((h, w), (int(rng.integers(3, 60)), int(rng.integers(3, 60)))):
            ours = to_uint8_map(predicted, size, "max")
            np.testing.assert_array_equal(ours, transformers_444_depth(predicted[None], (size[1], size[0])))
    # at the prediction's own size the map is the cast itself: truncation toward zero
    exact = torch.tensor([[255.0, 1.0, 0.99999994, 0.0], [-0.5, 45.9999847, 46.0000076, 128.5]])
    assert to_uint8_map(exact, (2, 4), "max").tolist() == [[255, 1, 0, 0], [0, 45, 46, 128]]
