"""`faceshard weights`: which weights a preset needs, where faceshard looks, and whether they are there.

Nothing is downloaded or loaded: each role's weights are found with the very functions a build
fingerprints them with (`tasks.pipeline.weight_roles`, from files: `models.pretrained`), with the hub in cache-only mode, and the
registry's card (`models.registry.MODELS`) says what the model is. A role is

* `present`: its weights are on this machine (the source says where);
* `random`: missing, and the configuration allows a seeded random init (outputs marked random);
* `download`: missing from the cache, and the hub is reachable (HF_HUB_OFFLINE unset): the first
  build fetches it;
* `missing`: the build would refuse; `how` says where to put the file or which `--set` names it;
* `fallback`: an export-only model is missing (DeepfakeBench's 81-point landmarks): the build is not
  affected, and `faceshard export` writes dlib's 68 points instead and says so.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from faceshard.config import BuildConfig
from faceshard.models import registry

RUNNABLE = ("present", "random", "download", "fallback")


@contextlib.contextmanager
def _hub_cache_only() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for the duration: finding weights must never download them."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def _model_name(cfg: BuildConfig, role: str) -> str:
    return {
        "detector": f"{cfg.detect.backend}" + (" (HOG)" if cfg.detect.backend == "dlib" else ""),
        "identity": cfg.identity.embedder,
        "depth": cfg.depth.model,
        "embed": cfg.embed.model,
        "landmarks": "dlib-81",
    }[role]


def _configured_path(cfg: BuildConfig, role: str) -> str | None:
    """The local file or folder the configuration names for a role, if any (never downloaded)."""
    if role == "identity":
        return cfg.identity.weights
    if role == "depth" and registry.is_local_ref(cfg.depth.model):
        return cfg.depth.model
    if role == "embed":
        return cfg.embed.checkpoint
    if role == "landmarks":
        return cfg.crop.landmarks_model
    return None


def weights_report(cfg: BuildConfig) -> dict[str, Any]:
    """Per role of `cfg`: model, registry card, status, where it was found or looked for, how to provide it."""
    from faceshard.tasks.pipeline import weight_roles

    online = not registry.hub_offline()
    allow_random = cfg.runtime.allow_random_weights
    rows: list[dict[str, Any]] = []
    with _hub_cache_only():
        for role, find in weight_roles(cfg).items():
            name = _model_name(cfg, role)
            card = registry.MODELS.get(name)
            row: dict[str, Any] = {
                "role": role,
                "model": name,
                "default_weights": card.weights if card else None,
                "notes": card.notes if card else "",
                "license": card.license if card else "",
            }
            try:
                info = find(False)
                row |= {"status": "present", "source": info.source, "fingerprint": info.fingerprint}
            except registry.WeightsUnavailableError as exc:
                row |= {"status": "missing", "source": None, "how": str(exc)}
                hub = _configured_path(cfg, role) is None and role in ("depth", "embed")
                if allow_random:
                    with contextlib.suppress(registry.WeightsUnavailableError):
                        if find(True).random:
                            row["status"] = "random"
                if row["status"] == "missing" and online and hub:
                    row["status"] = "download"
            rows.append(row)
    if cfg.crop.save and cfg.crop.method.startswith("align") and not cfg.crop.landmarks_model:
        rows.append(_export_landmarks_row())
    return {
        "preset": cfg.preset,
        "can_run": all(r["status"] in RUNNABLE for r in rows),
        "allow_random_weights": allow_random,
        "weights": rows,
    }


def _export_landmarks_row() -> dict[str, Any]:
    """`faceshard export`'s landmark model (DeepfakeBench's 81 points) for a build it can export."""
    from faceshard.models.landmarks import landmarks_81_weights

    card = registry.MODELS["dlib-81"]
    row: dict[str, Any] = {
        "role": "export landmarks",
        "model": card.name,
        "default_weights": card.weights,
        "notes": card.notes,
        "license": card.license,
    }
    try:
        info = landmarks_81_weights()
        return row | {"status": "present", "source": info.source, "fingerprint": info.fingerprint}
    except registry.WeightsUnavailableError as exc:
        return row | {"status": "fallback", "source": None, "how": str(exc)}


def cache_locations() -> dict[str, str]:
    """The folders faceshard looks in for weights it is not given a path to."""
    from huggingface_hub import constants

    from faceshard.models.pretrained import torch_home

    return {
        "huggingface_cache": str(constants.HF_HUB_CACHE),
        "torch_checkpoints": str(torch_home() / "checkpoints"),
        "hub_offline": str(registry.hub_offline()).lower(),
    }
