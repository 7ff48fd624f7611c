"""`faceshard train`: a linear probe on cached face embeddings, the leanest consumer of a build.

Faces are mean-pooled per video and a logistic regression is fitted on one split and scored on the
others (video-level AUC). It reads only the committed embeddings: no video is decoded again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from faceshard.storage.reader import MissingColumnsError, how_to_add, load_faces, read_table
from faceshard.storage.status import dataset_status


def video_features(uri: str, split: str | list[str] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(videos, D) mean face embedding per video, its label, its id."""
    try:
        faces = load_faces(uri, split=split, columns=("emb_rgb",), emb_dtype="float32")
    except MissingColumnsError:
        raise MissingColumnsError(
            f"{uri}: the probe reads pooled embeddings (faces column emb_rgb), which this build did not"
            f" store; {how_to_add(['emb_rgb'])}"
        ) from None
    if faces.emb_rgb is None or len(faces) == 0:
        raise ValueError(f"{uri}: no faces with emb_rgb in split {split!r} (splits: see `faceshard report`)")
    ids, inverse = np.unique(faces.video_id, return_inverse=True)
    sums = np.zeros((len(ids), faces.emb_rgb.shape[1]), np.float64)
    np.add.at(sums, inverse, faces.emb_rgb)
    counts = np.bincount(inverse, minlength=len(ids))[:, None]
    labels = np.zeros(len(ids), np.int64)
    labels[inverse] = faces.label
    return (sums / counts).astype(np.float32), labels, ids.tolist()


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC via the Mann-Whitney U statistic; None when only one class is present."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    if len(positives) == 0 or len(negatives) == 0:
        return None
    return float(mannwhitneyu(positives, negatives).statistic / (len(positives) * len(negatives)))


def train_probe(
    uri: str, train_split: str = "train", eval_split: str | None = None, epochs: int = 200, seed: int = 0
) -> dict[str, Any]:
    """Fit on `train_split`, score on `eval_split` (default: every other split)."""
    status = dataset_status(uri)
    present = set(read_table(uri, "videos", columns=["split"])["split"].to_pylist())
    splits = sorted(present - {train_split}) if eval_split is None else [eval_split]
    x_train, y_train, _ = video_features(uri, train_split)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    torch.manual_seed(seed)
    model = torch.nn.Linear(x_train.shape[1], 1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    inputs, targets = torch.from_numpy((x_train - mean) / std), torch.from_numpy(y_train).float()
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(inputs).squeeze(1), targets)
        loss.backward()
        optimiser.step()
    result: dict[str, Any] = {
        "train": {"split": train_split, "videos": len(y_train), "loss": round(float(loss.detach()), 4)},
        "random_weights": status.get("random_weights", []),
    }
    if splits:
        x_eval, y_eval, _ = video_features(uri, splits)
        with torch.no_grad():
            scores = torch.sigmoid(model(torch.from_numpy((x_eval - mean) / std)).squeeze(1)).numpy()
        result["eval"] = {
            "splits": splits,
            "videos": len(y_eval),
            "auc": auc(y_eval, scores),
            "accuracy": float(((scores > 0.5) == y_eval).mean()),
        }
    return result
