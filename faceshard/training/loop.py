"""`faceshard train`: fit a MINTIME- or Megatron-style model on a build's cache, epoch by epoch.

Every epoch: stream the train split through `ShardDataset` (order a function of seed and epoch),
score the validation split at video level (AUC, accuracy, and per method), and write one checkpoint
(model, optimiser, history) atomically to the output directory. `resume=True` loads it and runs the
remaining epochs; because each epoch's data order and torch RNG are seeded by (seed, epoch), an
interrupted run resumed from its last checkpoint ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from faceshard.app.probe import auc
from faceshard.storage.datasets import SampleOptions, ShardDataset
from faceshard.storage.reader import read_table
from faceshard.storage.status import dataset_status
from faceshard.training.models import build_model

CHECKPOINT = "checkpoint.pt"
MODELS = ("mintime", "megatron", "probe")
# Settings that may differ between a run and its resumption (they do not change the weights).
RESUMABLE = ("epochs", "device", "workers")


class TrainingError(ValueError):
    """A training run that cannot start: a clear message, nothing written."""


@dataclasses.dataclass
class TrainSettings:
    """Everything that decides the weights of a run (plus where it runs)."""

    model: str = "mintime"
    epochs: int = 10
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.01
    seed: int = 0
    train_split: str = "train"
    val_splits: list[str] | None = None
    shuffle_buffer: int = 256
    num_frames: int = 16
    max_identities: int = 2
    megatron_length: int = 20
    device: str = "auto"
    workers: int = 0


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda: no CUDA device is available")
    return torch.device(device)


def validation_splits(uri: str, settings: TrainSettings) -> list[str]:
    """`val` when the build has it, else every split but the train split (or what was asked)."""
    if settings.val_splits:
        return list(settings.val_splits)
    present = set(read_table(uri, "videos", columns=["split"])["split"].to_pylist())
    return ["val"] if "val" in present else sorted(present - {settings.train_split})


def train(
    uri: str,
    settings: TrainSettings,
    out: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train and validate; returns the final summary (see module doc)."""
    if settings.model not in ("mintime", "megatron"):
        raise TrainingError(f"--model must be one of {', '.join(MODELS)}, got {settings.model!r}")
    device = resolve_device(settings.device)
    status = dataset_status(uri)
    fingerprint = status.get("fingerprint")
    options = SampleOptions(  # our model reads our keys: no copy of MINTIME's forward arguments
        settings.num_frames, settings.max_identities, settings.megatron_length, mintime_forward=False
    )
    # our Megatron-style model trains on our identity-aware samples (padding masked, 1 = fake)
    kind = "megatron_identity" if settings.model == "megatron" else settings.model
    common = {"kind": kind, "options": options, "seed": settings.seed}
    train_set = ShardDataset(uri, settings.train_split, shuffle_buffer=settings.shuffle_buffer, **common)
    val_splits = validation_splits(uri, settings)
    val_set = ShardDataset(uri, val_splits, shuffle=False, **common) if val_splits else None
    example = next(iter(ShardDataset(uri, settings.train_split, shuffle=False, **common)), None)
    if example is None:
        raise TrainingError(f"{uri}: split {settings.train_split!r} holds no video with faces to train on")

    torch.manual_seed(settings.seed)
    sizes = {"max_identities": settings.max_identities} if settings.model == "mintime" else {}
    model = build_model(settings.model, example, **sizes).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    history: list[dict[str, Any]] = []
    checkpoint_path = None if out is None else Path(out) / CHECKPOINT
    start = 0
    if checkpoint_path is not None and checkpoint_path.exists():
        if not resume:
            raise TrainingError(
                f"{checkpoint_path} exists: pass --resume to continue it, or choose another --out"
            )
        start, history = _load(checkpoint_path, settings, fingerprint, model, optimiser, device)

    for epoch in range(start, settings.epochs):
        started = time.perf_counter()
        torch.manual_seed(settings.seed * 100_003 + epoch)
        train_set.set_epoch(epoch)
        loss = _train_epoch(model, optimiser, train_set, settings, device)
        metrics = evaluate(model, val_set, settings, device) if val_set is not None else {}
        record = {"epoch": epoch + 1, "train_loss": loss, **metrics, "seconds": time.perf_counter() - started}
        history.append(record)
        if checkpoint_path is not None:
            _save(checkpoint_path, settings, fingerprint, model, optimiser, history)
        if on_epoch is not None:
            on_epoch(record)

    last = history[-1] if history else {}
    return {
        "model": settings.model,
        "epochs": len(history),
        "train_loss": last.get("train_loss"),
        "val_auc": last.get("val_auc"),
        "val_accuracy": last.get("val_accuracy"),
        "val_per_method": last.get("val_per_method", {}),
        "val_videos": last.get("val_videos", 0),
        "val_splits": val_splits,
        "history": history,
        "random_weights": status.get("random_weights", []),
        "device": str(device),
        "checkpoint": None if checkpoint_path is None else str(checkpoint_path),
        "resumed_from_epoch": start if resume else None,
    }


def _batches(dataset: ShardDataset, settings: TrainSettings) -> DataLoader:
    return DataLoader(dataset, batch_size=settings.batch_size, num_workers=settings.workers)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _train_epoch(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    dataset: ShardDataset,
    settings: TrainSettings,
    device: torch.device,
) -> float:
    model.train()
    total, count = 0.0, 0
    for batch in _batches(dataset, settings):
        batch = _to(batch, device)
        logits = model(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"].float())
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        total += float(loss.detach()) * len(logits)
        count += len(logits)
    return total / max(count, 1)


@torch.no_grad()
def predict(
    model: torch.nn.Module, dataset: ShardDataset, settings: TrainSettings, device: torch.device
) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(video ids, methods, labels, fake probabilities) of every video of `dataset`."""
    model.eval()
    ids: list[str] = []
    methods: list[str] = []
    labels, scores = [], []
    for batch in _batches(dataset, settings):
        scores.append(torch.sigmoid(model(_to(batch, device))).cpu().numpy())
        labels.append(batch["label"].numpy())
        ids.extend(batch["video_id"])
        methods.extend(batch["method"])
    if not ids:
        return [], [], np.zeros(0, np.int64), np.zeros(0, np.float32)
    return ids, methods, np.concatenate(labels), np.concatenate(scores)


def evaluate(
    model: torch.nn.Module, dataset: ShardDataset, settings: TrainSettings, device: torch.device
) -> dict[str, Any]:
    """Video-level metrics of `model` on `dataset` (see `video_metrics`)."""
    _, methods, labels, scores = predict(model, dataset, settings, device)
    return video_metrics(methods, labels, scores)


def video_metrics(methods: list[str], labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Video-level AUC and accuracy (threshold 0.5), overall and per fake method.

    Each method is scored as its own test set: its fakes against every real video of the split
    (`auc`, and `accuracy` over those videos), so a method's numbers are comparable with the overall
    ones; `detected` is the share of its fakes called fake (its recall).
    """
    if len(labels) == 0:
        return {"val_auc": None, "val_accuracy": None, "val_videos": 0, "val_per_method": {}}
    correct = (scores > 0.5) == (labels == 1)
    per_method: dict[str, dict[str, Any]] = {}
    method_array = np.array(methods, dtype=object)
    for method in sorted({m for m, y in zip(methods, labels, strict=True) if y == 1 and m}):
        fakes = (method_array == method) & (labels == 1)
        pair = fakes | (labels == 0)
        per_method[method] = {
            "videos": int(fakes.sum()),
            "reals": int((labels == 0).sum()),
            "auc": auc(labels[pair], scores[pair]),
            "accuracy": float(correct[pair].mean()),
            "detected": float(correct[fakes].mean()),
        }
    return {
        "val_auc": auc(labels, scores),
        "val_accuracy": float(correct.mean()),
        "val_videos": len(labels),
        "val_per_method": per_method,
    }


def _comparable(settings: TrainSettings) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(settings).items() if k not in RESUMABLE}


def _save(
    path: Path,
    settings: TrainSettings,
    fingerprint: str | None,
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    history: list[dict[str, Any]],
) -> None:
    """Write the checkpoint beside itself, then rename: a crash leaves the previous epoch's intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "settings": _comparable(settings),
        "fingerprint": fingerprint,
        "epoch": len(history),
        "model": model.state_dict(),
        "optimiser": optimiser.state_dict(),
        "history": history,
    }
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _load(
    path: Path,
    settings: TrainSettings,
    fingerprint: str | None,
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    device: torch.device,
) -> tuple[int, list[dict[str, Any]]]:
    state = torch.load(path, map_location=device, weights_only=False)
    if state["fingerprint"] != fingerprint:
        raise TrainingError(
            f"{path} was trained on a dataset with fingerprint {state['fingerprint']}, not {fingerprint}"
        )
    changed = {
        k: (v, _comparable(settings).get(k))
        for k, v in state["settings"].items()
        if _comparable(settings).get(k) != v
    }
    if changed:
        shown = ", ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in changed.items())
        raise TrainingError(f"{path} was trained with other settings ({shown}); resume with the same ones")
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    return int(state["epoch"]), list(state["history"])
