"""`faceshard preview`: the build's per-video code on a real two-face clip, drawn, with the boxes and
identities a build of the same clip with the same settings stores."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import faceshard_cli
from PIL import Image

from faceshard.app.preview import COLOURS
from faceshard.config import load_config
from faceshard.storage.reader import read_table

pytestmark = pytest.mark.slow

CLIP = "forgerynet_fake_2_faces.mp4"
SETTINGS = ["depth.enabled=false", "embed.depth=false"]
BOX = ["frame", "face", "identity", "x1", "y1", "x2", "y2"]
DOCS_IMG = os.environ.get("FACESHARD_DOCS_IMG")  # set to docs/img to refresh the README's screenshot


def _pixels_of(image: np.ndarray, colour: str) -> int:
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image.astype(int) - rgb).sum(axis=2) < 30).sum())


def test_preview_draws_two_identities_with_the_boxes_build_stores(
    local_runtime, shared_fixtures: Path, tmp_path: Path
) -> None:
    from faceshard.flows.local import run_build

    clip = shared_fixtures / CLIP
    if not clip.is_file():
        pytest.skip(f"needs {clip}")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(clip, corpus / CLIP)
    (corpus / "manifest.csv").write_text(f"path,label\n{CLIP},1\n")
    out = tmp_path / "dataset"
    run_build(str(corpus / "manifest.csv"), str(out), load_config("demo", overrides=SETTINGS, shard_size=1))

    sets = [arg for setting in SETTINGS for arg in ("--set", setting)]
    done = faceshard_cli("preview", str(clip), "--preset", "demo", *sets, "--out", str(tmp_path / "preview"))
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "preview" / "forgerynet_fake_2_faces.json").read_text())
    assert data["status"] == "ok" and data["n_identities"] == 2
    assert {face["identity"] for face in data["faces"]} == {0, 1}

    stored = pl.from_arrow(read_table(str(out), "faces", columns=BOX)).sort("frame", "face")
    previewed = pl.DataFrame(data["faces"]).select(BOX).sort("frame", "face")
    assert previewed.height == stored.height > 0
    assert previewed["frame"].to_list() == stored["frame"].to_list()
    assert previewed["identity"].to_list() == stored["identity"].to_list()
    boxes = previewed.select("x1", "y1", "x2", "y2").to_numpy().astype(np.float32)
    assert np.array_equal(boxes, stored.select("x1", "y1", "x2", "y2").to_numpy())

    image = Image.open(tmp_path / "preview" / "forgerynet_fake_2_faces.png").convert("RGB")
    pixels = np.asarray(image)
    assert pixels.std() > 20
    # Boxes (and labels) in the first two identity colours; none in a third.
    assert _pixels_of(pixels, COLOURS[0]) > 200 and _pixels_of(pixels, COLOURS[1]) > 200
    assert _pixels_of(pixels, COLOURS[2]) < 20
    if DOCS_IMG:
        scaled = image.resize((720, round(image.height * 720 / image.width)), Image.Resampling.LANCZOS)
        scaled.quantize(colors=128).save(Path(DOCS_IMG) / "preview.png", optimize=True)
