"""models/embedders.py: timm weights saved to files (and a fake hub cache) and loaded back the real way."""

from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import huggingface_hub.constants
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from oracles import megatron_pad_frames, megatron_repvit, mintime_val_transform
from PIL import Image
from timm.data import create_transform, resolve_data_config

from faceshard.config import load_config
from faceshard.models import registry
from faceshard.models.embedders import Embedder
from faceshard.models.registry import WeightsUnavailableError
from faceshard.records import Face

REPVIT = "repvit_m0_9.dist_300e_in1k"


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    registry.clear_model_cache()


def seeded(name: str, seed: int, **kwargs: object) -> torch.nn.Module:
    """A randomly initialised timm model whose BN statistics are not the trivial 0/1."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((120, 100, 3), (64, 64, 3), (300, 240, 3))
    ]


def timm_reference(model: torch.nn.Module, batch: list[np.ndarray]) -> torch.Tensor:
    """timm's own eval transform for the model, then the model: the call our stage must reproduce."""
    transform = create_transform(**resolve_data_config({}, model=model))
    return torch.stack([transform(Image.fromarray(image)) for image in batch])


@pytest.fixture(scope="module")
def repvit_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A DDP-style training checkpoint: `state_dict` wrapper, `module.` prefix, classifier included."""
    model = seeded(REPVIT, 0)
    path = tmp_path_factory.mktemp("ckpt") / "repvit.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    headless = seeded(REPVIT, 99, num_classes=0)
    headless.load_state_dict(model.state_dict(), strict=False)
    return path, headless


def test_pooled_embeddings_match_timms_transform_and_forward(
    repvit_checkpoint: tuple[Path, torch.nn.Module],
) -> None:
    path, reference = repvit_checkpoint
    embedder = Embedder(REPVIT, checkpoint=str(path), dtype="float32")
    ours = embedder.embed(images())
    with torch.no_grad():
        direct = reference(timm_reference(reference, images())).numpy()
    assert ours.shape == (3, 384) and embedder.dim == 384 and ours.dtype == np.float32
    assert np.abs(ours - direct).max() <= 1e-3
    assert embedder.weights.source == str(path) and not embedder.weights.random
    assert embedder.fingerprint == registry.fingerprint_file(path)


def test_tokens_are_the_7x7_feature_grid(repvit_checkpoint: tuple[Path, torch.nn.Module]) -> None:
    path, reference = repvit_checkpoint
    embedder = Embedder(REPVIT, checkpoint=str(path), output="tokens", dtype="float32")
    tokens = embedder.embed(images()[:2])
    with torch.no_grad():
        grid = reference.forward_features(timm_reference(reference, images()[:2]))  # (2, 384, 7, 7)
    assert tokens.shape == (2, 49, 384)
    np.testing.assert_allclose(tokens[1, 7 * 2 + 3], grid[1, :, 2, 3].numpy(), atol=1e-3)


def test_float16_by_default_and_the_stages_fill_faces(
    repvit_checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    path, _ = repvit_checkpoint
    embedder = Embedder(REPVIT, checkpoint=str(path))
    crop = images()[0]
    depth = crop[:, :, 0].copy()
    face = Face(frame=0, face=0, box=np.zeros(4, np.float32), score=1.0, frame_width=9, frame_height=9)
    face.crop, face.depth = crop, depth
    embedder.embed_depth(embedder([face]))
    assert face.emb_rgb.dtype == np.float16 and face.emb_rgb.shape == (384,)
    np.testing.assert_array_equal(face.emb_rgb, embedder.embed([crop])[0])
    np.testing.assert_array_equal(
        face.emb_depth, embedder.embed([np.repeat(depth[:, :, None], 3, axis=2)])[0]
    )
    tokens = Embedder(REPVIT, checkpoint=str(path), output="tokens")
    tokens([face])
    assert face.tokens.shape == (49, 384) and face.tokens.dtype == np.float16


def test_safetensors_and_model_wrapper_give_the_same_embeddings(
    repvit_checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    path, reference = repvit_checkpoint
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    safetensors.torch.save_file(state, tmp_path / "model.safetensors")
    torch.save({"model": state}, tmp_path / "wrapped.pt")
    from_file = Embedder(REPVIT, checkpoint=str(path), dtype="float32").embed(images()[:1])
    from_dir = Embedder(REPVIT, checkpoint=str(tmp_path), dtype="float32")  # directory → model.safetensors
    from_wrapper = Embedder(REPVIT, checkpoint=str(tmp_path / "wrapped.pt"), dtype="float32")
    np.testing.assert_allclose(from_dir.embed(images()[:1]), from_file, atol=1e-5)
    np.testing.assert_allclose(from_wrapper.embed(images()[:1]), from_file, atol=1e-5)
    assert from_dir.fingerprint != from_wrapper.fingerprint


def to_efficientnet_pytorch_names(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm EfficientNet weights under lukemelas' efficientnet_pytorch names (what MINTIME saved)."""
    flat = [block for stage in model.blocks for block in stage]
    separable = {
        "conv_dw": "_depthwise_conv",
        "bn1": "_bn1",
        "se.conv_reduce": "_se_reduce",
        "se.conv_expand": "_se_expand",
        "conv_pw": "_project_conv",
        "bn2": "_bn2",
    }
    inverted = {
        "conv_pw": "_expand_conv",
        "bn1": "_bn0",
        "conv_dw": "_depthwise_conv",
        "bn2": "_bn1",
        "se.conv_reduce": "_se_reduce",
        "se.conv_expand": "_se_expand",
        "conv_pwl": "_project_conv",
        "bn3": "_bn2",
    }
    in_block = {"DepthwiseSeparableConv": separable, "InvertedResidual": inverted}
    top = {
        "conv_stem": "_conv_stem",
        "bn1": "_bn0",
        "conv_head": "_conv_head",
        "bn2": "_bn1",
        "classifier": "_fc",
    }
    nested = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    renamed = {}
    for key, value in model.state_dict().items():
        match = re.fullmatch(r"(blocks\.\d+\.\d+)\.(.+)\.(\w+)", key)
        if match:
            index = nested.index(match[1])
            layer = in_block[type(flat[index]).__name__][match[2]]
            renamed[f"_blocks.{index}.{layer}.{match[3]}"] = value
        else:
            layer, _, param = key.rpartition(".")
            renamed[f"{top[layer]}.{param}"] = value
    return renamed


def test_mintimes_efficientnet_pytorch_b0_checkpoint_is_accepted(tmp_path: Path) -> None:
    reference = seeded("tf_efficientnet_b0", 5)
    checkpoint = {f"efficient_net.{k}": v for k, v in to_efficientnet_pytorch_names(reference).items()}
    checkpoint["transformer.layers.0.weight"] = torch.zeros(3)  # the rest of MINTIME's model is ignored
    path = tmp_path / "EfficientNetB0_checkpoint89_All"
    torch.save(checkpoint, path)
    embedder = Embedder("efficientnet_b0", checkpoint=str(path), output="tokens", dtype="float32")
    assert embedder.weights.name == "tf_efficientnet_b0"  # TF "same" padding + BN eps 1e-3, like MINTIME's
    with torch.no_grad():
        direct = reference.forward_features(timm_reference(reference, images()[:2]))
    tokens = embedder.embed(images()[:2])
    assert tokens.shape == (2, 49, 1280)
    assert np.abs(tokens - direct.flatten(2).transpose(1, 2).numpy()).max() <= 1e-3


def test_checkpoint_problems_are_clear(
    repvit_checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        Embedder(REPVIT, checkpoint=str(tmp_path / "nope.pth"))
    path, _ = repvit_checkpoint
    with pytest.raises(ValueError, match="does not fit"):
        Embedder("efficientnet_b0", checkpoint=str(path))
    with pytest.raises(ValueError, match="unknown timm model"):
        Embedder("no_such_net", checkpoint=str(path))
    (tmp_path / "pickled.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="weights-only state dict"):
        Embedder(REPVIT, checkpoint=str(tmp_path / "pickled.pt"))


def test_timm_weights_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    commit = "abcdefabcdefabcdefabcdefabcdefabcdefabcd"
    repo = tmp_path / f"models--timm--{REPVIT}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    reference = seeded(REPVIT, 7)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    safetensors.torch.save_file(state, repo / "snapshots" / commit / "model.safetensors")
    embedder = Embedder(REPVIT, dtype="float32")
    assert embedder.fingerprint == f"hf:timm/{REPVIT}@{commit}" and not embedder.weights.random
    with torch.no_grad():
        direct = reference.forward_head(
            reference.forward_features(timm_reference(reference, images()[:1])), pre_logits=True
        )
    assert np.abs(embedder.embed(images()[:1]) - direct.numpy()).max() <= 1e-3


def test_random_fallback_only_when_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as error:
        Embedder(REPVIT)
    assert f"timm/{REPVIT}" in str(error.value) and "embed.checkpoint" in str(error.value)
    with pytest.warns(RuntimeWarning, match="RANDOM WEIGHTS"):
        first = Embedder(REPVIT, allow_random=True, dtype="float32")
    assert first.weights.random and first.fingerprint == f"random:{REPVIT}:seed0"
    registry.clear_model_cache()
    with pytest.warns(RuntimeWarning):
        second = Embedder(REPVIT, allow_random=True, dtype="float32")
    np.testing.assert_array_equal(first.embed(images()[:1]), second.embed(images()[:1]))


def face_crops() -> list[np.ndarray]:
    """Crops as the pipelines cut them: near-square, a few larger than 224, one 100 × 99."""
    rng = np.random.default_rng(12)
    shapes = ((99, 100, 3), (180, 150, 3), (260, 231, 3), (201, 199, 3), (64, 64, 3))
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]


def normalised(model: torch.nn.Module, canvases: list[np.ndarray]) -> torch.Tensor:
    """The model's own mean/std (its timm data config) on uint8 canvases: what both pipelines should see."""
    config = resolve_data_config({}, model=model)
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    batch = torch.stack([torch.from_numpy(c).permute(2, 0, 1).float() for c in canvases]) / 255.0
    return (batch - mean) / std


def test_mintime_preset_embeds_mintimes_isotropic_padded_crop(tmp_path: Path) -> None:
    """MINTIME fed its EfficientNet-B0 the whole crop, longest side 224, zero-padded: not timm's centre
    crop; BGR (cv2.imread) 0–255 floats without mean/std (deepfakes_dataset.py:257, :339; train.py:341)."""
    cfg = load_config("mintime")
    assert cfg.embed.input == "isotropic:224" and cfg.embed.output == "tokens"
    assert cfg.embed.normalise == "bgr255" and cfg.embed.dtype == "float32"
    reference = seeded(cfg.embed.model, 3, num_classes=0)
    torch.save(reference.state_dict(), tmp_path / "b0.pth")
    embedder = Embedder(
        cfg.embed.model,
        str(tmp_path / "b0.pth"),
        cfg.embed.output,
        cfg.embed.dtype,
        input_spec=cfg.embed.input,
        normalise=cfg.embed.normalise,
    )
    crops = face_crops()
    expected = [mintime_val_transform(crop, 224) for crop in crops]
    for canvas, oracle in zip(embedder.canvases(crops), expected, strict=True):
        np.testing.assert_array_equal(canvas, oracle)
    assert int(expected[0].any(axis=(1, 2)).sum()) == 221  # 99 rows · 2.24, truncated
    tokens = embedder.embed(crops)
    # MINTIME's tensor: its images are cv2.imread's BGR, torch.tensor(images).float(), b f h w c → c h w
    bgr = torch.stack(
        [torch.tensor(canvas[:, :, ::-1].copy()).float().permute(2, 0, 1) for canvas in expected]
    )
    with torch.no_grad():
        grid = reference.forward_features(bgr)  # (n, 1280, 7, 7)
    assert tokens.shape == (len(crops), 49, 1280) and tokens.dtype == np.float32
    np.testing.assert_allclose(tokens, grid.flatten(2).transpose(1, 2).numpy(), atol=1e-3)
    # our richer variant (RGB, ImageNet mean/std) stays available under its own setting
    ours = Embedder(
        cfg.embed.model,
        str(tmp_path / "b0.pth"),
        "tokens",
        "float32",
        input_spec="isotropic:224",
        normalise="model",
    )
    with torch.no_grad():
        grid = reference.forward_features(normalised(reference, expected))
    np.testing.assert_allclose(ours.embed(crops), grid.flatten(2).transpose(1, 2).numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="canvas input"):
        Embedder(cfg.embed.model, str(tmp_path / "b0.pth"), input_spec="timm", normalise="bgr255")


def test_megatron_preset_embeds_the_run_padded_to_its_largest_crop(tmp_path: Path) -> None:
    """Megatron zero-padded a video's crops (and depth maps) to the largest of them, never resizing or
    cutting, and ran RepViT on that divided by 255, without mean/std (its RepVit.forward)."""
    cfg = load_config("megatron")
    assert cfg.embed.input == "pad:max" and cfg.depth.input == "native" and cfg.embed.normalise == "unit"
    reference = seeded(cfg.embed.model, 4, num_classes=0)
    torch.save(reference.state_dict(), tmp_path / "repvit.pth")
    embedder = Embedder(
        cfg.embed.model,
        str(tmp_path / "repvit.pth"),
        "pooled",
        cfg.embed.dtype,
        input_spec=cfg.embed.input,
        normalise=cfg.embed.normalise,
    )
    crops = face_crops()
    expected = megatron_pad_frames(crops)
    assert expected[0].shape == (260, 231, 3)  # the largest height and width, whole
    for canvas, oracle in zip(embedder.canvases(crops), expected, strict=True):
        np.testing.assert_array_equal(canvas, oracle)
    faces = []
    for crop in crops:
        face = Face(frame=0, face=0, box=np.zeros(4, np.float32), score=1.0, frame_width=9, frame_height=9)
        face.crop, face.depth = crop, crop[:, :, 1].copy()
        faces.append(face)
    embedder.embed_depth(embedder(faces))
    depth_expected = megatron_pad_frames([np.repeat(c[:, :, 1:2], 3, axis=2) for c in crops])

    def chw(canvases: list[np.ndarray]) -> torch.Tensor:
        return torch.stack([torch.from_numpy(c).permute(2, 0, 1) for c in canvases])

    with torch.no_grad():
        rgb = megatron_repvit(reference, chw(expected)).numpy()
        depth = megatron_repvit(reference, chw(depth_expected)).numpy()
        model_normalised = reference(normalised(reference, expected)).numpy()
    np.testing.assert_allclose(np.stack([f.emb_rgb for f in faces]), rgb, atol=1e-4)
    np.testing.assert_allclose(np.stack([f.emb_depth for f in faces]), depth, atol=1e-4)
    assert not np.allclose(rgb, model_normalised, atol=1e-2)  # the scaling matters


def test_pad_keeps_large_crops_whole_and_tokens_need_one_canvas(tmp_path: Path) -> None:
    reference = seeded(REPVIT, 5, num_classes=0)
    torch.save(reference.state_dict(), tmp_path / "repvit.pth")
    embedder = Embedder(REPVIT, str(tmp_path / "repvit.pth"), dtype="float32", input_spec="pad:224")
    crops = face_crops()
    shapes = [canvas.shape for canvas in embedder.canvases(crops)]
    assert shapes == [(224, 224, 3), (224, 224, 3), (260, 231, 3), (224, 224, 3), (224, 224, 3)]
    assert embedder.embed(crops).shape == (5, 384)  # two canvas sizes, one call
    with pytest.raises(ValueError, match="7×7 grid"):
        Embedder(REPVIT, str(tmp_path / "repvit.pth"), output="tokens", input_spec="pad:224")
    with pytest.raises(ValueError, match="model input"):
        Embedder(REPVIT, str(tmp_path / "repvit.pth"), input_spec="stretch:224")
