"""End-to-end builds: a real Prefect flow fanning shards out to a local Ray cluster, real MTCNN and
dlib, real H.264 clips from `faceshard synth`; checked against the synthetic ground truth."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as pds
import pytest

from faceshard.app.synth import load_truth
from faceshard.config import load_config
from faceshard.errors import FingerprintMismatch
from faceshard.flows.local import run_build
from faceshard.flows.plan import dry_run
from faceshard.storage.commit import read_metadata
from faceshard.storage.fsio import open_fs
from faceshard.storage.reader import load_faces
from faceshard.storage.status import dataset_status

pytestmark = pytest.mark.slow

SPEC_COLUMNS = {
    "videos": {
        "video_id",
        "path",
        "label",
        "method",
        "split",
        "source",
        "dataset",
        "status",
        "error",
        "fps",
        "n_frames",
        "width",
        "height",
        "n_faces",
        "n_identities",
        "shard",
    },
    "faces": {
        "video_id",
        "frame",
        "face",
        "identity",
        "x1",
        "y1",
        "x2",
        "y2",
        "score",
        "area_ratio",
        "size_bucket",
    },
    "identities": {"video_id", "identity", "rank", "n_faces", "mean_side", "first_frame", "last_frame"},
}
FAST = ["depth.enabled=false", "embed.depth=false"]


def table(uri: str | Path, name: str) -> list[dict]:
    """A table exactly as SPEC §10 says other tools read it."""
    return pds.dataset(f"{uri}/{name}", format="parquet", partitioning="hive").to_table().to_pylist()


def truths(manifest: Path) -> dict[str, dict]:
    """Ground truth per clip, keyed by the clip's absolute path (what the videos table stores)."""
    return {str((manifest.parent / t["path"]).resolve()): t for t in load_truth(manifest.parent).values()}


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


@pytest.fixture(scope="module")
def demo_build(local_runtime, synth_corpus: Path, tmp_path_factory) -> tuple[Path, dict]:
    """The demo preset (depth and embeddings included) over the synthetic corpus, two videos a shard."""
    out = tmp_path_factory.mktemp("demo") / "dataset"
    summary = run_build(str(synth_corpus), str(out), load_config("demo", shard_size=2))
    return out, summary


def test_demo_build_meets_the_output_contract(demo_build) -> None:
    out, summary = demo_build
    assert summary["failed_shards"] == []
    assert summary["processed"] == summary["shards_total"] == 2
    for name, columns in SPEC_COLUMNS.items():
        rows = table(out, name)
        assert rows, name
        assert columns <= set(rows[0]), f"{name} misses {columns - set(rows[0])}"
    faces = table(out, "faces")
    assert all(f["emb_rgb"] is not None and len(f["emb_rgb"]) == 384 for f in faces)
    assert all(f["emb_depth"] is not None and f["depth"] and f["crop"] for f in faces)
    assert all(1 <= f["size_bucket"] <= 20 for f in faces)
    meta = read_metadata(*open_fs(str(out)))  # the metadata entry of the output's log
    assert sorted(meta["random_weights"]) == ["depth", "embed"]
    assert meta["weights"]["detector"]["name"] == "mtcnn"
    assert not meta["weights"]["identity"]["random"]
    status = dataset_status(str(out))
    assert (status["committed"], status["failed"], status["pending"]) == (2, 0, 0)


def test_faces_are_found_where_the_truth_has_them(demo_build, synth_corpus: Path) -> None:
    out, _ = demo_build
    videos = {row["video_id"]: row for row in table(out, "videos")}
    faces_by_frame: dict[tuple[str, int], list[list[float]]] = {}
    for face in table(out, "faces"):
        path = videos[face["video_id"]]["path"]
        faces_by_frame.setdefault((path, face["frame"]), []).append(
            [face["x1"], face["y1"], face["x2"], face["y2"]]
        )
    checked = 0
    for path, truth in truths(synth_corpus).items():
        for frame in truth["frames"][:: truth["fps"]]:  # per_second samples frames 0, fps, 2·fps, …
            for face in frame["faces"]:
                found = faces_by_frame.get((path, frame["frame"]), [])
                assert any(iou(box, face["box"]) > 0.3 for box in found), (path, frame["frame"], face)
                checked += 1
    assert checked >= 8


def test_identity_counts_equal_the_truth(demo_build, synth_corpus: Path) -> None:
    out, _ = demo_build
    expected = {path: truth["n_identities"] for path, truth in truths(synth_corpus).items()}
    got = {row["path"]: row["n_identities"] for row in table(out, "videos")}
    assert got == expected
    identities = table(out, "identities")
    for video_id in {row["video_id"] for row in identities}:
        ranks = sorted((r["rank"], -r["mean_side"]) for r in identities if r["video_id"] == video_id)
        assert [r for r, _ in ranks] == list(range(len(ranks)))
        assert [s for _, s in ranks] == sorted(s for _, s in ranks)  # rank 0 = largest mean side


def test_reader_loads_a_split_with_labels(demo_build, synth_corpus: Path) -> None:
    out, _ = demo_build
    labels = {
        str((synth_corpus.parent / r["path"]).resolve()): (int(r["label"]), r["split"])
        for r in csv.DictReader(synth_corpus.open())
    }
    videos = {row["video_id"]: row for row in table(out, "videos")}
    train = load_faces(str(out), split="train")
    assert train.emb_rgb.shape == (len(train.video_id), 384)
    assert np.isfinite(train.emb_rgb.astype(np.float32)).all()
    expected = [labels[videos[v]["path"]][0] for v in train.video_id]
    assert train.label.tolist() == expected
    assert {labels[videos[v]["path"]][1] for v in train.video_id} == {"train"}


def test_second_build_redoes_nothing(demo_build, synth_corpus: Path) -> None:
    out, _ = demo_build
    markers = sorted((out / "_faceshard" / "commits").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in markers}
    data_before = sorted(str(p) for p in out.rglob("*.parquet"))
    summary = run_build(str(synth_corpus), str(out), load_config("demo", shard_size=2))
    assert (summary["processed"], summary["skipped"]) == (0, 2)
    assert {p: p.stat().st_mtime_ns for p in markers} == before
    assert sorted(str(p) for p in out.rglob("*.parquet")) == data_before


def test_a_smaller_relocated_manifest_keeps_every_committed_row(
    demo_build, synth_corpus: Path, tmp_path
) -> None:
    """The issue's reproduction: a 2-video manifest, on a copy of the corpus, built into the output."""
    out = tmp_path / "dataset"
    shutil.copytree(demo_build[0], out)
    moved = tmp_path / "elsewhere"
    shutil.copytree(synth_corpus.parent, moved)
    rows = (moved / "manifest.csv").read_text().splitlines()
    (moved / "two.csv").write_text("\n".join(rows[:3]) + "\n")
    data = [p for name in ("videos", "faces", "identities") for p in (out / name).rglob("*.parquet")]
    committed = [*data, *(out / "_faceshard" / "commits").glob("*.json")]
    stamps = {p: p.stat().st_mtime_ns for p in committed}
    cfg = load_config("demo", shard_size=2)

    plan = dry_run(str(moved / "two.csv"), str(out), cfg)
    assert {k: plan[k] for k in ("videos", "shards", "pending", "videos_to_process", "not_in_manifest")} == {
        "videos": 2,
        "shards": 2,
        "pending": 0,
        "videos_to_process": 0,
        "not_in_manifest": 2,
    }
    summary = run_build(str(moved / "two.csv"), str(out), cfg)
    expected = {"videos_total": 2, "videos_processed": 0, "videos_skipped": 2, "not_in_manifest": 2}
    assert {k: summary[k] for k in expected} == expected
    assert (summary["shards_total"], summary["failed_shards"]) == (2, [])
    assert {p: p.stat().st_mtime_ns for p in committed} == stamps, "a committed file changed"
    status = dataset_status(str(out))
    assert (status["committed"], status["pending"], status["not_in_manifest"]) == (2, 0, 2)
    assert len(table(out, "videos")) == 4


def test_changed_threshold_is_refused_without_rebuild(demo_build, synth_corpus: Path) -> None:
    out, _ = demo_build
    changed = load_config("demo", overrides=["detect.thresholds=[0.8,0.9,0.9]"], shard_size=2)
    with pytest.raises(FingerprintMismatch, match=r"detect\.thresholds"):
        run_build(str(synth_corpus), str(out), changed)
    assert dataset_status(str(out))["committed"] == 2  # nothing was touched


def test_broken_file_is_an_error_row_and_its_shard_still_commits(
    local_runtime, synth_corpus, tmp_path
) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(synth_corpus.parent, corpus)
    (corpus / "videos" / "broken.mp4").write_bytes(b"this is not a video")
    rows = list(csv.DictReader((corpus / "manifest.csv").open()))
    rows.insert(1, {"path": "videos/broken.mp4", "label": "1", "method": "x", "split": "train"})
    with (corpus / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "method", "split"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "dataset"
    summary = run_build(
        str(corpus / "manifest.csv"), str(out), load_config("demo", overrides=FAST, shard_size=3)
    )
    assert summary["failed_shards"] == []
    videos = table(out, "videos")
    assert len(videos) == len(rows)
    broken = [v for v in videos if v["path"].endswith("broken.mp4")]
    assert broken[0]["status"] == "error" and broken[0]["error"]
    neighbours = [v for v in videos if v["shard"] == broken[0]["shard"] and v is not broken[0]]
    assert len(neighbours) == 2 and all(v["status"] == "ok" for v in neighbours)
    faced = {f["video_id"] for f in table(out, "faces")}
    assert {v["video_id"] for v in neighbours} <= faced
    status = dataset_status(str(out))
    assert [v["video_id"] for v in status["failed_videos"]] == [broken[0]["video_id"]]


def test_retry_failed_touches_only_the_failed_videos_shard(local_runtime, synth_corpus, tmp_path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(synth_corpus.parent, corpus)
    victim = corpus / "videos" / "synth_003.mp4"
    good_bytes = victim.read_bytes()
    victim.write_bytes(good_bytes[: len(good_bytes) // 20])  # truncated: nothing decodes
    out = tmp_path / "dataset"
    cfg = load_config("demo", overrides=FAST, shard_size=2)
    run_build(str(corpus / "manifest.csv"), str(out), cfg)
    videos = table(out, "videos")
    failed = [v for v in videos if v["status"] == "error"]
    assert [Path(v["path"]).name for v in failed] == ["synth_003.mp4"]
    other = [p for p in out.rglob("*.parquet") if f"shard={failed[0]['shard']:06d}" not in str(p)]
    other_markers = [
        p
        for p in (out / "_faceshard" / "commits").glob("*.json")
        if p.name != f"shard-{failed[0]['shard']:06d}.json"
    ]
    stamps = {p: p.stat().st_mtime_ns for p in [*other, *other_markers]}
    good_rows = {v["video_id"]: v for v in videos if v["status"] == "ok"}

    victim.write_bytes(good_bytes)  # the user fixed the file
    summary = run_build(str(corpus / "manifest.csv"), str(out), cfg, retry_failed=True)
    assert summary["processed"] == 1 and summary["videos"] == 1
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    after = table(out, "videos")
    assert len(after) == len(videos) and all(v["status"] == "ok" for v in after)
    for video_id, row in good_rows.items():
        assert next(v for v in after if v["video_id"] == video_id) == row
    assert dataset_status(str(out))["failed_videos"] == []
