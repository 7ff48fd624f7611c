"""Every preset builds synthetic clips and the real ForgeryNet fixture clips end to end, and finds the
right number of identities.

Offline and on a 2-core CPU, each preset runs with the few overrides this machine needs, listed in
OFFLINE: hub weights fall back to seeded random init (`runtime.allow_random_weights`), MINTIME's
FaceNet weights are not shipped so its identities use dlib's real model, Depth Anything runs at 154 px
and DeepfakeBench samples 8 frames instead of 32 (dlib HOG with upsampling is ~1 s per 1080p frame).
The identity check keeps every face (`detect.keep=all`): with `largest`/`first` a two-person clip
legitimately yields whichever face the policy keeps.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pyarrow.dataset as pds
import pytest

from faceshard.config import PRESETS, load_config
from faceshard.flows.local import run_build

pytestmark = pytest.mark.slow

OFFLINE = {
    "demo": [],
    "mintime": ["identity.embedder=dlib"],
    "megatron": ["depth.input_size=154"],
    "deepfakebench": ["sampling.strategy=uniform:8"],
}
FIXTURE_IDENTITIES = {"forgerynet_fake_2_faces.mp4": 2, "forgerynet_real_1_face.mp4": 1}


@pytest.fixture(scope="module")
def preset_corpus(synth_corpus: Path, shared_fixtures: Path, tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """Two synthetic clips (1 and 3 people) and the two ForgeryNet clips, with expected identity counts."""
    root = tmp_path_factory.mktemp("preset-corpus")
    expected: dict[str, int] = {}
    rows = []
    truths = [json.loads(p.read_text()) for p in sorted((synth_corpus.parent / "truth").glob("*.json"))]
    for truth in sorted(truths, key=lambda t: t["n_identities"])[:: len(truths) - 1]:
        target = root / Path(truth["path"]).name
        shutil.copy(synth_corpus.parent / truth["path"], target)
        rows.append({"path": target.name, "label": truth["label"], "split": "train"})
        expected[target.name] = truth["n_identities"]
    for name, count in FIXTURE_IDENTITIES.items():
        shutil.copy(shared_fixtures / name, root / name)
        rows.append({"path": name, "label": int("fake" in name), "split": "test"})
        expected[name] = count
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest, expected


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_builds_and_counts_identities(preset: str, preset_corpus, local_runtime, tmp_path) -> None:
    manifest, expected = preset_corpus
    if preset == "deepfakebench":
        # DeepfakeBench's drop rule (align:256): dlib finds no face in any aligned crop of the fake clip's
        # second person, so none of its faces is kept (its own preprocess.py drops those frames too).
        expected = {**expected, "forgerynet_fake_2_faces.mp4": 1}
    overrides = [*OFFLINE[preset], "runtime.allow_random_weights=true", "detect.keep=all"]
    cfg = load_config(preset, overrides=overrides, shard_size=2)
    summary = run_build(str(manifest), str(tmp_path / "out"), cfg)
    assert summary["failed_shards"] == [] and summary["processed"] == 2
    videos = pds.dataset(tmp_path / "out" / "videos", format="parquet", partitioning="hive").to_table()
    rows = {Path(row["path"]).name: row for row in videos.to_pylist()}
    assert {name: row["status"] for name, row in rows.items()} == dict.fromkeys(expected, "ok")
    assert {name: row["n_identities"] for name, row in rows.items()} == expected
    faces = pds.dataset(tmp_path / "out" / "faces", format="parquet", partitioning="hive").to_table()
    assert ("emb_rgb" in faces.column_names) == (cfg.embed.enabled and cfg.embed.output == "pooled")
    assert ("tokens" in faces.column_names) == (cfg.embed.enabled and cfg.embed.output == "tokens")
    assert ("crop" in faces.column_names) == cfg.crop.save
    if "tokens" in faces.column_names:
        assert faces.schema.field("tokens").type.list_size == 49
