"""The `mintime` preset offline: it refuses before anything starts, naming every missing model and where
it is looked for, or runs FaceNet and EfficientNet-B0 with seeded random weights marked `random`."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from faceshard.config import load_config
from faceshard.flows.plan import dry_run
from faceshard.models import registry
from faceshard.models.identity import build_identity_embedder
from faceshard.models.registry import WeightsUnavailableError, model_card
from faceshard.tasks.pipeline import weights_manifest


@pytest.fixture
def no_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine without FaceNet's file or timm's cached EfficientNet (and the hub unreachable)."""
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    registry.clear_model_cache()
    yield tmp_path
    registry.clear_model_cache()


def test_dry_run_refuses_naming_both_missing_models_and_where_to_put_them(no_weights: Path) -> None:
    manifest = no_weights / "manifest.csv"
    manifest.write_text("path,label\nclip.mp4,0\n")
    out = no_weights / "out"
    with pytest.raises(WeightsUnavailableError) as error:
        dry_run(str(manifest), str(out), load_config("mintime"))
    message = str(error.value)
    assert "2 models have no weights" in message
    assert f"{no_weights}/torch/checkpoints/20180402-114759-vggface2.pt" in message  # $TORCH_HOME
    assert "identity.weights" in message and "timm/efficientnet_b0.ra_in1k" in message
    assert "embed.checkpoint" in message and "allow_random_weights" in message
    assert not out.exists()  # refused before anything was written
    assert any("20180402-114759-vggface2.pt" in where for where in model_card("facenet").looked_for)
    assert any("embed.checkpoint" in where for where in model_card("efficientnet_b0").looked_for)


def test_random_weights_are_allowed_and_recorded_as_random(no_weights: Path) -> None:
    cfg = load_config("mintime", overrides=["runtime.allow_random_weights=true"])
    roles = weights_manifest(cfg)
    assert roles["identity"]["random"] and roles["identity"]["source"] == "random"
    assert roles["embed"]["random"] and roles["embed"]["source"] == "random"
    assert roles["identity"]["fingerprint"] == "random:facenet:seed0"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        embedder = build_identity_embedder(cfg.identity, "cpu", allow_random=True)
        again = build_identity_embedder(cfg.identity, "cpu", allow_random=True)
    assert embedder.weights.random and again.model is embedder.model  # loaded (and warned) once
    assert sum("RANDOM WEIGHTS" in str(w.message) for w in caught) == 1
    crops = [np.full((90, 80, 3), v, np.uint8) for v in (30, 200)]
    vectors = embedder.embed_crops(crops)
    assert vectors.shape == (2, 512) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    registry.clear_model_cache()  # seeded: the same random weights in every worker
    again = build_identity_embedder(cfg.identity, "cpu", allow_random=True)
    np.testing.assert_array_equal(again.embed_crops(crops), vectors)
    with pytest.raises(WeightsUnavailableError, match="vggface2"):
        build_identity_embedder(cfg.identity, "cpu")
