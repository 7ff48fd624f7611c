"""Bad input: every kind of broken file ends as exactly one `videos` row with a readable status, and
never takes a neighbour down with it. Runs the shard worker directly (tasks/ needs no Prefect or Ray)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from faceshard.app.synth import write_broken_samples
from faceshard.config import load_config
from faceshard.records import VideoTask
from faceshard.storage.commit import Output
from faceshard.storage.manifest import plan_shards, read_manifest
from faceshard.storage.reader import read_table
from faceshard.tasks.pipeline import VideoProcessor
from faceshard.tasks.shard import process_shard

MUST_FAIL = {
    "empty": "empty",
    "text": "",
    "audio_only": "video stream",
    "directory": "directory",
    "truncated": "",
}
MUST_SUCCEED = {"good", "odd_name", "symlink", "grayscale", "corrupt_middle"}
MAY_HAVE_NO_FACES = {"tiny_frames", "one_frame"}


@pytest.fixture(scope="module")
def cfg():
    return load_config("demo", overrides=["depth.enabled=false", "embed.depth=false"])


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Path]:
    return write_broken_samples(tmp_path_factory.mktemp("broken"))


@pytest.fixture(scope="module")
def processor(cfg) -> VideoProcessor:
    return VideoProcessor(cfg, device="cpu")


@pytest.mark.parametrize("name", sorted([*MUST_FAIL, *MUST_SUCCEED, *MAY_HAVE_NO_FACES]))
def test_each_bad_input_is_one_readable_row(name: str, samples, processor) -> None:
    video = VideoTask(video_id=name, path=str(samples[name]), label=0)
    result = processor(video, shard_id=0)
    row = result.video
    if name in MUST_FAIL:
        assert row["status"] == "error", row
        assert row["error"] and MUST_FAIL[name] in row["error"].lower()
        assert "Traceback" not in row["error"]
        assert result.faces == []
    elif name in MUST_SUCCEED:
        assert row["status"] == "ok", row
        assert row["n_faces"] >= 1 and row["n_identities"] == 1
        assert row["n_frames"] >= 1 and row["width"] == 320
    else:
        assert row["status"] in {"ok", "no_faces"} and row["error"] is None, row
    assert len(result.faces) == row["n_faces"]


def test_grayscale_and_one_frame_videos_decode_as_rgb(samples, processor) -> None:
    one = processor(VideoTask("one", str(samples["one_frame"]), 0), 0).video
    assert one["n_frames"] == 1
    gray = processor(VideoTask("gray", str(samples["grayscale"]), 0), 0)
    assert gray.video["status"] == "ok" and gray.faces[0]["crop"]


def test_a_shard_of_broken_files_commits_every_row(samples, cfg, tmp_path) -> None:
    """All bad inputs and their good neighbours in one shard: the shard commits, nothing is lost."""
    manifest = samples["good"].parent / "manifest.csv"
    names = sorted(samples)
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([samples[n].name, i % 2] for i, n in enumerate(names))
        writer.writerows([["/etc/hostname", 0], ["../outside.mp4", 1]])
    videos = read_manifest(str(manifest))
    plan = plan_shards(videos, shard_size=len(videos))[0]
    out = Output.open(f"file://{tmp_path}/out", config=cfg, weights={})
    out.set_plan([plan])
    stats = process_shard(plan, cfg, out)
    assert stats["videos"] == len(videos) == len(names) + 2
    rows = read_table(f"file://{tmp_path}/out", "videos").to_pylist()
    assert len(rows) == len(videos)
    by_path = {row["path"]: row for row in rows}
    outside = [row for row in rows if "outside" in row["path"] or "hostname" in row["path"]]
    assert len(outside) == 2 and all("outside" in r["error"] and r["status"] == "error" for r in outside)
    assert by_path[str(samples["good"])]["status"] == "ok"
    assert sum(row["status"] == "error" for row in rows) == len(MUST_FAIL) + 2
