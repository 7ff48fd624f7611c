"""The cache trains a detector: a synthetic corpus built for real, then the MINTIME-style model on it.

Which weights are real and which random: face detection is facenet-pytorch's MTCNN with its real
weights (they ship in the wheel) and identities come from dlib's real face-recognition ResNet
(`face_recognition_models`); the RepViT embedder that writes the 7×7 tokens has NO reachable weights
offline, so it runs from a seeded random init (the output's metadata lists it under random_weights).
Whatever the model learns therefore comes from what a random-feature cache still carries: which faces
belong to which identity over time (a swapped face forms an identity of its own for part of the clip),
face sizes, and random-projection appearance features.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from faceshard.app.probe import auc
from faceshard.app.synth import make_corpus
from faceshard.config import load_config
from faceshard.flows.local import run_build
from faceshard.storage.reader import read_table
from faceshard.storage.status import dataset_status
from faceshard.training.loop import TrainSettings, train

pytestmark = pytest.mark.slow

N_VIDEOS = 96
# The demo preset without depth and stored crops, with 7×7 token output; one frame per second
# (3–4 frames per 3–4 s clip) keeps the build near three minutes on two contended cores.
BUILD = ["depth.enabled=false", "embed.depth=false", "embed.output=tokens", "crop.save=false"]
HELD_OUT = ("val", "test")


@pytest.fixture(scope="module")
def token_cache(local_runtime, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train-e2e")
    manifest = make_corpus(root / "corpus", n_videos=N_VIDEOS, seed=0)
    out = root / "out"
    summary = run_build(str(manifest), str(out), load_config("demo", overrides=BUILD, shard_size=12))
    assert summary["failed_shards"] == []
    return out


def structure_score(faces: list[dict]) -> int:
    """Oracle: 1 when a video has more identities than faces in any frame, or one identity twice in a
    frame. Real clips show each person all the time; a swap makes an identity of its own (or merges
    into a person already on screen)."""
    per_frame = Counter(f["frame"] for f in faces)
    assigned = [f for f in faces if f["identity"] >= 0]
    identities = {f["identity"] for f in assigned}
    twice = max(Counter((f["frame"], f["identity"]) for f in assigned).values(), default=1) > 1
    return int(len(identities) > max(per_frame.values(), default=0) or twice)


def test_mintime_model_trains_from_the_token_cache_of_a_real_build(token_cache: Path, tmp_path: Path) -> None:
    status = dataset_status(str(token_cache))
    assert status["random_weights"] == ["embed"]  # only the RepViT token embedder is random-init

    # The cache carries a held-out signal: identity structure alone separates many fakes.
    videos = read_table(str(token_cache), "videos", split=HELD_OUT).to_pylist()
    faces = read_table(str(token_cache), "faces", columns=["video_id", "frame", "identity"]).to_pylist()
    by_video: dict[str, list[dict]] = {}
    for face in faces:
        by_video.setdefault(face["video_id"], []).append(face)
    labels = np.array([v["label"] for v in videos])
    oracle = np.array([structure_score(by_video.get(v["video_id"], [])) for v in videos], float)
    assert auc(labels, oracle) >= 0.75

    settings = TrainSettings(model="mintime", epochs=10, batch_size=8, lr=1e-3, val_splits=list(HELD_OUT))
    result = train(str(token_cache), settings, out=tmp_path / "ckpt")
    print(json.dumps({k: result[k] for k in ("val_auc", "val_accuracy", "val_videos", "train_loss")}))
    assert result["val_videos"] == len(videos)  # every held-out clip has faces and is scored
    losses = [h["train_loss"] for h in result["history"]]
    assert losses[-1] < losses[0]  # it learns from the cache
    # Clearly above chance (0.50 ± 0.09 for 38 held-out clips). Measured on this corpus (issue #8b note,
    # 2-core box): this run (seed 0) 0.90; training seeds 0–7 mean 0.88, min 0.79, max 0.94; the oracle
    # above 0.85. Without the frame attention (each face slot blind to the other faces of its frame, as
    # in MINTIME's own model) the same run gave 0.55–0.67 over seeds, at 6 or 10 epochs.
    assert result["val_auc"] >= 0.75
