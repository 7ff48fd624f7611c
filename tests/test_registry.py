"""models/registry.py: fingerprints, local-vs-hub resolution, the per-process cache, the random fallback."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import huggingface_hub.constants
import pytest
import torch

from faceshard.models import registry
from faceshard.models.registry import (
    WeightsUnavailableError,
    build_random,
    cached_model,
    fingerprint_dir,
    fingerprint_file,
    hub_weights_info,
    is_local_ref,
    model_card,
)


def fake_hub_snapshot(cache: Path, repo_id: str, commit: str) -> Path:
    """The layout huggingface_hub writes: refs/main names the commit, snapshots/<commit> holds the files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


def test_fingerprint_file_is_sha256_and_follows_the_content(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"first weights")
    assert fingerprint_file(weights) == "sha256:" + hashlib.sha256(b"first weights").hexdigest()
    time.sleep(0.01)
    weights.write_bytes(b"other weights, longer")
    assert fingerprint_file(weights) == "sha256:" + hashlib.sha256(b"other weights, longer").hexdigest()


def test_fingerprint_dir_hashes_weight_and_config_files_only(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"a")
    before = fingerprint_dir(tmp_path)
    (tmp_path / "README.md").write_text("notes do not change what the model computes")
    assert fingerprint_dir(tmp_path) == before
    time.sleep(0.01)
    (tmp_path / "model.safetensors").write_bytes(b"bb")
    assert fingerprint_dir(tmp_path) != before
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsUnavailableError, match="no weight or config files"):
        fingerprint_dir(empty)


def test_local_path_or_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not is_local_ref("depth-anything/Depth-Anything-V2-Small-hf")
    assert not is_local_ref("timm/repvit_m0_9.dist_300e_in1k")
    for path in ("/abs/model", "./model", "../model", "~/model", "a/b/c", "weights.pt", "x.safetensors"):
        assert is_local_ref(path), path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert is_local_ref("org/name")  # an existing directory wins over the hub-id reading


def test_hub_weights_info_reads_the_commit_of_a_cached_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (fake_hub_snapshot(tmp_path, "org/model", commit) / "config.json").write_text("{}")
    info = hub_weights_info("org/model", "model")
    assert (info.source, info.fingerprint) == ("hf:org/model", f"hf:org/model@{commit}")


def test_hub_offline_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert not registry.hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert registry.hub_offline()


def test_cached_model_builds_once_per_key_even_from_many_threads() -> None:
    registry.clear_model_cache()
    calls: list[str] = []

    def factory(name: str) -> object:
        calls.append(name)
        time.sleep(0.02)
        return object()

    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(cached_model(("m", "w", "cpu"), lambda: factory("a"))))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["a"] and all(r is results[0] for r in results)
    other = cached_model(("m", "w", "cuda"), lambda: factory("b"))
    assert other is not results[0] and calls == ["a", "b"]
    registry.clear_model_cache()


def test_random_fallback_refused_unless_allowed() -> None:
    with pytest.raises(WeightsUnavailableError) as error:
        build_random(
            "tiny",
            lambda: torch.nn.Linear(4, 2),
            allow_random=False,
            tried=["hub id 'org/tiny'", "local path /nowhere"],
            how="Pass --set x.model=/dir",
            what="org/tiny",
        )
    message = str(error.value)
    assert "org/tiny" in message and "/nowhere" in message and "--set x.model" in message
    assert "allow_random_weights" in message


def test_random_fallback_is_seeded_marked_and_leaves_the_callers_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    with pytest.warns(RuntimeWarning, match="RANDOM WEIGHTS"):
        first, info = build_random(
            "tiny", lambda: torch.nn.Linear(4, 2), allow_random=True, tried=["x"], how=""
        )
    assert torch.equal(torch.rand(3), expected_next)
    with pytest.warns(RuntimeWarning):
        second, _ = build_random(
            "tiny", lambda: torch.nn.Linear(4, 2), allow_random=True, tried=["x"], how=""
        )
    assert torch.equal(first.weight, second.weight)
    assert info.random and info.source == "random" and info.fingerprint == "random:tiny:seed0"


def test_registry_cards_carry_the_spec_defaults() -> None:
    assert model_card("facenet").input_size == 128 and model_card("facenet").dim == 512
    assert model_card("repvit_m0_9.dist_300e_in1k").dim == 384
    assert model_card("efficientnet_b0").dim == 1280
    assert model_card("depth-anything/Depth-Anything-V2-Small-hf").input_size == 518
    with pytest.raises(ValueError, match="registered"):
        model_card("nope")
