"""Which weights a model will run with, decided from files and the hub's cache alone.

A build's driver asks this for every model before it plans (the weights are part of the dataset
fingerprint), and so does `faceshard weights`. Importing torch, timm, torchvision or transformers to
answer it would cost seconds of CPU on every start, a build with nothing to do included. As timm
keeps each model's pretrained config (hub id, file) in a table beside the model, the registry's cards
(`models.registry.MODELS`) hold the hub id of every model a preset names, and the lookups here are
file-system and `huggingface_hub` cache lookups (`try_to_load_from_cache`, a cache-only
`snapshot_download`), which import no model library.

Only when the files cannot answer is the model's own module imported: online and not cached (its
loader downloads), missing with random weights not allowed (its loader's error names every place
looked at), an embedder the registry has no card for (timm knows its hub id), or a local embedding
checkpoint (its keys tell MINTIME's efficientnet_pytorch weights from timm's).
"""

from __future__ import annotations

import os
from pathlib import Path

from faceshard.models.registry import (
    MODELS,
    WeightsInfo,
    fingerprint_dir,
    hub_offline,
    hub_revision,
    hub_weights_info,
    is_local_ref,
    random_weights_info,
)

# The files timm reads a hub model's weights from, in its order (timm/models/_hub.py), and open_clip's.
CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
# What a seeded random Depth Anything is: DepthAnythingConfig()'s layout, V2-Small's.
DEPTH_RANDOM_ARCH = "DepthAnythingForDepthEstimation"


def torch_home() -> Path:
    """`$TORCH_HOME`, else `$XDG_CACHE_HOME/torch`, else `~/.cache/torch`: where torch.hub and
    facenet-pytorch cache weights, read as they read it (without importing either)."""
    default = os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default)))


def cached_hub_checkpoint(hub_id: str) -> str | None:
    """The cached weights file of a timm model on the hub, or None (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    for name in CHECKPOINT_FILES:
        found = try_to_load_from_cache(hub_id, name)
        if isinstance(found, str):
            return found
    return None


def embedder_hub_id(model_name: str) -> str | None:
    """The hub id of a timm model the registry has a card for (None: ask timm itself)."""
    card = MODELS.get(model_name)
    if card is None or card.kind != "embedder" or not card.weights.startswith("timm/"):
        return None
    return card.weights


def depth_weights(model_ref: str, allow_random: bool) -> WeightsInfo:
    """What `DepthEstimator(model_ref)` will run with: a local directory's content hash, the cached hub
    snapshot's commit, or `random` (allowed and unreachable offline). Otherwise (online and not
    cached: download; missing and not allowed: the error naming what was tried) its loader is called."""
    if is_local_ref(model_ref):
        path = Path(model_ref).expanduser()
        if path.is_dir():
            return WeightsInfo(model_ref, str(path.resolve()), fingerprint_dir(path))
        if allow_random:
            return random_weights_info(DEPTH_RANDOM_ARCH)
    elif hub_revision(model_ref) is not None:
        return hub_weights_info(model_ref, model_ref)
    elif allow_random and hub_offline():
        return random_weights_info(DEPTH_RANDOM_ARCH)
    from faceshard.models.depth import load_depth_model

    return load_depth_model(model_ref, allow_random)[2]


def embed_weights(model_name: str, checkpoint: str | None, allow_random: bool) -> WeightsInfo:
    """What `Embedder(model_name, checkpoint)` will run with: for a model with a card and no
    checkpoint, the cached hub revision or `random` (allowed, offline), from the cache alone; anything
    else is decided by `models.embedders.embed_weights` (timm and torch imported)."""
    hub_id = embedder_hub_id(model_name) if checkpoint is None else None
    if hub_id is not None:
        if cached_hub_checkpoint(hub_id) is not None:
            return hub_weights_info(hub_id, model_name)
        if allow_random and hub_offline():
            return random_weights_info(model_name)
    from faceshard.models.embedders import embed_weights as from_timm

    return from_timm(model_name, checkpoint, allow_random)
