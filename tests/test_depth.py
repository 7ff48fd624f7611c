"""models/depth.py on a tiny Depth Anything saved with save_pretrained and loaded back the real way."""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from faceshard.models import registry
from faceshard.models.depth import DepthEstimator, depth_anything_processor, to_uint8_map
from faceshard.models.registry import WeightsUnavailableError
from faceshard.records import Face

INPUT_SIZE = 56


def tiny_depth_anything(seed: int) -> torch.nn.Module:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=INPUT_SIZE,
        patch_size=14,
        out_indices=[1, 2, 3, 4],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    torch.manual_seed(seed)
    return DepthAnythingForDepthEstimation(config).eval()


def save_tiny(directory: Path, seed: int) -> torch.nn.Module:
    model = tiny_depth_anything(seed)
    model.save_pretrained(directory)
    depth_anything_processor(INPUT_SIZE).save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    directory = tmp_path_factory.mktemp("tiny-depth")
    return directory, save_tiny(directory, seed=0)


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    registry.clear_model_cache()


def crops_of_many_shapes() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = [(50, 80), (90, 60), (64, 64), (128, 128), (37, 41), (80, 50)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def direct_depth(model: torch.nn.Module, crop: np.ndarray) -> np.ndarray:
    """One crop through the processor and model alone, resized to the crop and min–max'd by hand."""
    processor = depth_anything_processor(INPUT_SIZE)
    pixels = processor(crop, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    with torch.no_grad():
        predicted = model(pixel_values=pixels).predicted_depth
    resized = F.interpolate(predicted[:, None], size=crop.shape[:2], mode="bicubic", align_corners=False)[
        0, 0
    ]
    depth = resized.numpy().astype(np.float64)
    return np.round((depth - depth.min()) / (depth.max() - depth.min()) * 255).astype(np.uint8)


def test_batched_maps_match_per_crop_calls_each_at_its_own_size(
    tiny_dir: tuple[Path, torch.nn.Module],
) -> None:
    directory, model = tiny_dir
    estimator = DepthEstimator(str(directory), input_size=INPUT_SIZE, batch_size=3)
    crops = crops_of_many_shapes()
    maps = estimator.predict(crops)
    for crop, depth in zip(crops, maps, strict=True):
        assert depth.shape == crop.shape[:2] and depth.dtype == np.uint8
        assert depth.min() == 0 and depth.max() == 255
        assert np.abs(depth.astype(int) - direct_depth(model, crop).astype(int)).max() <= 1


def test_two_sizes_in_one_batch_are_not_resized_to_the_last_crop(
    tiny_dir: tuple[Path, torch.nn.Module],
) -> None:
    directory, _ = tiny_dir
    estimator = DepthEstimator(str(directory), input_size=INPUT_SIZE)
    small, large = crops_of_many_shapes()[2:4]  # 64² and 128²: one processed shape, one batch
    assert estimator.preprocess([small])[0].shape == estimator.preprocess([large])[0].shape
    together = estimator.predict([small, large])
    assert [m.shape for m in together] == [(64, 64), (128, 128)]
    assert np.abs(together[0].astype(int) - estimator.predict([small])[0].astype(int)).max() <= 1


def test_stage_fills_face_depth_and_reports_local_weights(tiny_dir: tuple[Path, torch.nn.Module]) -> None:
    directory, _ = tiny_dir
    estimator = DepthEstimator(str(directory), input_size=INPUT_SIZE)
    faces = [
        Face(
            frame=0,
            face=i,
            box=np.zeros(4, np.float32),
            score=1.0,
            frame_width=640,
            frame_height=480,
            crop=crop,
        )
        for i, crop in enumerate(crops_of_many_shapes()[:2])
    ]
    estimator(faces)
    assert [f.depth.shape for f in faces] == [(50, 80), (90, 60)]
    assert not estimator.weights.random
    assert estimator.weights.source == str(directory.resolve())
    assert estimator.fingerprint == registry.fingerprint_dir(directory)


def test_weights_rewritten_in_place_change_the_fingerprint_and_are_reloaded(tmp_path: Path) -> None:
    save_tiny(tmp_path, seed=1)
    before = DepthEstimator(str(tmp_path), input_size=INPUT_SIZE)
    time.sleep(0.01)
    save_tiny(tmp_path, seed=2)
    after = DepthEstimator(str(tmp_path), input_size=INPUT_SIZE)
    assert before.fingerprint != after.fingerprint and before.model is not after.model
    crop = crops_of_many_shapes()[0]
    assert not np.array_equal(before.predict([crop])[0], after.predict([crop])[0])


def test_hub_id_loads_from_the_cache_with_its_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    commit = "feedfacefeedfacefeedfacefeedfacefeedface"
    repo = tmp_path / "models--org--tiny-depth"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    model = save_tiny(repo / "snapshots" / commit, seed=3)
    estimator = DepthEstimator("org/tiny-depth", input_size=INPUT_SIZE)
    assert estimator.fingerprint == f"hf:org/tiny-depth@{commit}"
    crop = crops_of_many_shapes()[0]
    assert np.abs(estimator.predict([crop])[0].astype(int) - direct_depth(model, crop).astype(int)).max() <= 1


def test_unreachable_weights_refused_unless_random_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as error:
        DepthEstimator(input_size=28)
    assert "depth-anything/Depth-Anything-V2-Small-hf" in str(error.value)
    assert "--set depth.model" in str(error.value)
    with pytest.raises(WeightsUnavailableError, match="local directory"):
        DepthEstimator(str(tmp_path / "missing" / "dir"), input_size=28)

    with pytest.warns(RuntimeWarning, match="RANDOM WEIGHTS"):
        estimator = DepthEstimator(input_size=28, allow_random=True)
    assert estimator.weights.random
    assert estimator.fingerprint == "random:DepthAnythingForDepthEstimation:seed0"
    assert estimator.predict([crops_of_many_shapes()[0]])[0].shape == (50, 80)


def test_constant_prediction_becomes_zeros() -> None:
    assert not to_uint8_map(torch.ones(4, 4), (6, 3)).any()


def test_a_canvas_input_maps_back_onto_each_crop(tiny_dir: tuple[Path, torch.nn.Module]) -> None:
    """depth.input=pad:S: the model sees the crop centred on a zero S × S canvas; the crop's own part of
    that map, min–max'd, is the crop's depth. Oracle: the processor and model alone on a padded canvas."""
    directory, model = tiny_dir
    estimator = DepthEstimator(str(directory), input_size=INPUT_SIZE, input_spec="pad:140")
    crops = crops_of_many_shapes()
    for crop, depth in zip(crops, estimator.predict(crops), strict=True):
        h, w = crop.shape[:2]
        canvas = np.zeros((140, 140, 3), np.uint8)
        top, left = (140 - h) // 2, (140 - w) // 2
        canvas[top : top + h, left : left + w] = crop
        processor = depth_anything_processor(INPUT_SIZE)
        pixels = processor(canvas, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
        with torch.no_grad():
            predicted = model(pixel_values=pixels).predicted_depth
        full = F.interpolate(predicted[:, None], size=(140, 140), mode="bicubic", align_corners=False)[0, 0]
        part = full[top : top + h, left : left + w].numpy().astype(np.float64)
        expected = np.round((part - part.min()) / (part.max() - part.min()) * 255).astype(np.uint8)
        assert depth.shape == (h, w)
        assert np.abs(depth.astype(int) - expected.astype(int)).max() <= 1
