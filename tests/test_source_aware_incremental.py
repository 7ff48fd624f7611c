"""Source-aware incremental builds: a fake whose source an earlier build committed reuses the source's
detections read back from the output (the `detections` side table), never decoding the source again.

Builds run through the flow's planning and commit path (`flows.plan`, `tasks.shard.process_shard`) with
one real processor (demo preset, no depth/embeddings), on a small FF++-shaped synth corpus.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pytest

from faceshard.app.synth import make_ffpp_corpus
from faceshard.config import BuildConfig, load_config
from faceshard.flows import plan as planning
from faceshard.records import Detections, Frame, VideoInfo
from faceshard.storage import fsio
from faceshard.storage.commit import Output, read_state
from faceshard.storage.detections import CommittedSource, detections_table
from faceshard.storage.manifest import load_manifest
from faceshard.storage.reader import read_table
from faceshard.storage.status import dataset_status
from faceshard.tasks import pipeline
from faceshard.tasks import shard as shard_task
from faceshard.tasks.pipeline import VideoProcessor
from faceshard.tasks.source_store import memory_from, memory_rows
from faceshard.tasks.sources import SourceMemory, thumbnail

FAST = ["depth.enabled=false", "embed.enabled=false", "runtime.device=cpu"]
WEIGHTS = {"detector": {"source": "tests", "fingerprint": "mtcnn-test", "random": False}}
FRAMES = 20  # 2 s at 10 fps: per_second samples 2 frames a clip
NOT_COMPARED = {"seconds", "shard"}  # wall time, and the shard a video landed in


# ---------------------------------------------------------------- the side table's rows


def _memory() -> SourceMemory:
    rng = np.random.default_rng(0)
    memory = SourceMemory("src", info=VideoInfo(10.0, 64, 48, 30, n_frames=30), usable=True)
    one = Detections(np.array([[1.5, 2.25, 30.0, 40.0]], np.float32), np.array([0.99], np.float32))
    two = Detections(np.array([[1, 2, 3, 4], [5, 6, 7, 8.5]], np.float32), np.array([0.9, 0.8], np.float32))
    frames = [Frame(i, np.zeros((48, 64, 3), np.uint8)) for i in (0, 1, 2, 10, 2)]
    # a face-less frame (1), a fallback try detected twice (2): order and every answer are kept
    memory.record(frames, [one, Detections.empty(), two, one, two])
    for key, identity in {(0, 0): 0, (2, 0): 0, (2, 1): 1, (10, 0): 0}.items():
        memory.identity[key] = identity
        memory.thumbs[key] = thumbnail(rng.integers(0, 256, (40, 30, 3), np.uint8))
        if key != (2, 1):  # an identity embedding may be missing
            memory.embeddings[key] = rng.standard_normal(128).astype(np.float32)
    return memory


def test_a_source_memory_reads_back_exactly_from_the_side_table() -> None:
    memory = _memory()
    table = detections_table(memory_rows(memory))
    rows = table.drop_columns(["split", "shard"]).to_pylist()
    video = {"status": "ok", "error": None, "fps": 10.0, "width": 64, "height": 48}
    back = memory_from(CommittedSource("src", 3, {**video, "n_frames": 30, "n_frames_container": 30}, rows))
    assert isinstance(back, SourceMemory) and back.usable
    assert back.order == memory.order == [0, 1, 2, 10, 2]
    assert back.detections.keys() == memory.detections.keys()
    for frame, dets in memory.detections.items():
        assert np.array_equal(back.detections[frame].boxes, dets.boxes)
        assert np.array_equal(back.detections[frame].scores, dets.scores)
        assert back.detections[frame].boxes.dtype == np.float32
    assert back.identity == memory.identity
    assert back.thumbs.keys() == memory.thumbs.keys()
    assert all(np.array_equal(back.thumbs[k], memory.thumbs[k]) for k in memory.thumbs)  # bit-exact
    assert back.embeddings.keys() == memory.embeddings.keys()
    assert all(np.array_equal(back.embeddings[k], memory.embeddings[k]) for k in memory.embeddings)
    assert back.verify_frames(8) == memory.verify_frames(8)
    assert (back.info.width, back.info.height, back.info.fps, back.info.n_frames) == (64, 48, 10.0, 30)


def test_a_source_that_cannot_be_reused_says_why() -> None:
    rows = memory_rows(_memory())
    ok = {"status": "ok", "error": None, "fps": 10.0, "width": 64, "height": 48, "n_frames": 30}
    ok["n_frames_container"] = 30
    failed = {**ok, "status": "error", "error": "InvalidDataError: broken"}
    assert memory_from(CommittedSource("s", 1, failed, [])) == "source failed: InvalidDataError: broken"
    assert memory_from(CommittedSource("s", 1, ok, None)) == (
        "shard 1 was committed without source detections (an older faceshard)"
    )
    assert memory_from(CommittedSource("s", 1, {**ok, "status": "no_faces"}, [])) == (
        "source has no usable detections"
    )
    assert isinstance(memory_from(CommittedSource("s", 1, ok, rows)), SourceMemory)


# ---------------------------------------------------------------- builds


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


class Opened:
    """Records every video path the pipeline probes (what it opens first, for every video)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.probe = pipeline.probe

    def __call__(self, path: str, *args: Any, **kwargs: Any) -> Any:
        self.paths.append(path)
        return self.probe(path, *args, **kwargs)


def _build(
    manifest: Path, out: Path, processor: VideoProcessor, cfg: BuildConfig, retry_failed: bool = False
) -> dict[str, Any]:
    """One `faceshard build` of `manifest` into `out`, in process: the flow's planning, the shard worker
    and the commit; returns the shard stats, detector frames and paths opened."""
    videos = load_manifest(str(manifest))
    opened, before = Opened(), processor.counted.frames
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shard_task, "get_processor", lambda _cfg: processor)
        patch.setattr(pipeline, "probe", opened)
        with Output.open(str(out), config=cfg, weights=WEIGHTS) as output:
            plan = planning.plan_output(output, videos, cfg, prune=False)
            output.apply_plan(plan)
            todo = planning.shards_to_run(output, videos, plan, retry_failed)
            stats = [shard_task.process_shard(shard, cfg, output, retry_failed) for shard in todo]
    return {"stats": stats, "detector_frames": processor.counted.frames - before, "opened": opened.paths}


def _rows(out: Path, table: str) -> dict[tuple, dict]:
    rows = read_table(str(out), table).to_pylist()
    key = ("video_id", "frame", "face") if table == "faces" else ("video_id", "identity")
    if table == "videos":
        key = ("video_id",)
    return {tuple(r[k] for k in key): {k: v for k, v in r.items() if k not in NOT_COMPARED} for r in rows}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    """2 sources (2 persons, 1 person) with 4 aligned fakes each, 20 frames a clip."""
    manifest = make_ffpp_corpus(tmp_path_factory.mktemp("ffpp"), n_sources=2, misaligned=False, frames=FRAMES)
    with manifest.open() as fh:
        rows = list(csv.DictReader(fh))
    return manifest, rows


def setup_cfg() -> BuildConfig:
    return load_config("demo", overrides=FAST)


@pytest.fixture(scope="module")
def setup(corpus) -> tuple[VideoProcessor, BuildConfig]:
    cfg = setup_cfg()
    return VideoProcessor(cfg, device="cpu"), cfg


@pytest.fixture(scope="module")
def builds(corpus, setup, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The whole corpus in one source-aware build; and the sources alone, then the whole manifest again
    into the same output with the sources' files moved away (they must not be needed)."""
    manifest, rows = corpus
    processor, cfg = setup
    work = tmp_path_factory.mktemp("builds")
    one = _build(manifest, work / "one", processor, cfg)
    sources = _write_manifest(manifest.parent / "sources.csv", [r for r in rows if not r["source"]])
    first = _build(sources, work / "inc", processor, cfg)
    paths = [str(manifest.parent / r["path"]) for r in rows if not r["source"]]
    for path in paths:
        os.rename(path, path + ".away")
    try:
        second = _build(manifest, work / "inc", processor, cfg)
    finally:
        for path in paths:
            os.rename(path + ".away", path)
    return {"one": one, "first": first, "second": second, "work": work, "source_paths": paths}


def test_added_fakes_reuse_their_committed_sources_without_opening_them(corpus, builds) -> None:
    _, rows = corpus
    second = builds["second"]
    fakes = sorted(r["video_id"] for r in rows if r["source"])
    assert len(fakes) == 8
    assert not set(second["opened"]) & set(builds["source_paths"]), "a committed source was opened again"
    assert sum(s["videos"] for s in second["stats"]) == 8  # the fakes only: the sources are committed
    # one read per source (per shard that holds its fakes), not per fake
    assert sum(s["committed_sources"] for s in second["stats"]) == 2
    videos = _rows(builds["work"] / "inc", "videos")
    for video_id in fakes:
        row = videos[(video_id,)]
        assert (row["status"], row["detections"], row["detections_note"]) == ("ok", "source", None), row
    # the detector ran only on each fake's verification frames: what the one build spent on its fakes
    assert builds["first"]["detector_frames"] + second["detector_frames"] == builds["one"]["detector_frames"]
    per_source = builds["first"]["detector_frames"] / 2  # what detecting a fake on its own takes
    assert second["detector_frames"] <= len(fakes) * per_source / 2, second["detector_frames"]
    # the sources' shard committed their detections with its rows; the fakes' shards hold none
    state = read_state(*fsio.open_fs(str(builds["work"] / "inc")))
    held = sorted(m["rows"].get("detections", 0) for m in state.markers.values())
    assert held[0] == 0 and held[-1] > 0 and all("detections" in m["files"] for m in state.markers.values())
    side_files = sorted((builds["work"] / "inc").glob("detections/split=*/shard=*/*.parquet"))
    assert len(side_files) == sum(len(m["files"]["detections"]) for m in state.markers.values())
    with Output.open(str(builds["work"] / "inc"), config=setup_cfg(), weights=WEIGHTS) as output:
        assert output.cleanup()["removed"] == 0  # committed side-table files are never collected
    assert sorted((builds["work"] / "inc").glob("detections/split=*/shard=*/*.parquet")) == side_files
    status = dataset_status(str(builds["work"] / "inc"), verify=True)  # side files verified as the rest
    assert status["ok"] and not status["corrupt_files"] and not status["problems"], status


def test_the_incremental_rows_equal_the_one_build_rows(builds) -> None:
    for table in ("videos", "faces", "identities"):
        one, inc = _rows(builds["work"] / "one", table), _rows(builds["work"] / "inc", table)
        assert one.keys() == inc.keys(), table
        for key in one:
            assert inc[key] == one[key], (table, key)
    identities = read_table(str(builds["work"] / "inc"), "identities")
    linked = identities.filter(pc.is_valid(identities["source_identity"]))
    assert linked.num_rows >= 8 and pc.any(linked["manipulated"]).as_py()


def _side_table_dropped(original: Any) -> Any:
    def commit_shard(self: Output, plan: Any, tables: Any, stats: Any = None) -> Any:
        return original(self, plan, {k: v for k, v in tables.items() if k != "detections"}, stats)

    return commit_shard


def test_an_output_without_source_detections_falls_back_and_says_why(corpus, setup, tmp_path) -> None:
    """An output whose shards were committed without the side table (an older faceshard)."""
    manifest, rows = corpus
    here = manifest.parent  # manifests list paths under their own folder
    processor, cfg = setup
    source = next(r for r in rows if not r["source"] and r["video_id"].endswith("1"))
    fake = next(r for r in rows if r["source"] == source["video_id"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Output, "commit_shard", _side_table_dropped(Output.commit_shard))
        _build(_write_manifest(here / "old-s.csv", [source]), tmp_path / "out", processor, cfg)
    state = read_state(*fsio.open_fs(str(tmp_path / "out")))
    assert all("detections" not in m["files"] for m in state.markers.values())
    second = _build(_write_manifest(here / "old-m.csv", [source, fake]), tmp_path / "out", processor, cfg)
    row = _rows(tmp_path / "out", "videos")[(fake["video_id"],)]
    assert (row["status"], row["detections"]) == ("ok", "detector")
    assert row["detections_note"] == (
        f"source {source['video_id']} not reused: shard 0 was committed without source detections"
        " (an older faceshard)"
    )
    assert source["path"] not in " ".join(second["opened"])


def test_a_failed_source_makes_its_fakes_fall_back(corpus, setup, tmp_path) -> None:
    manifest, rows = corpus
    processor, cfg = setup
    source = next(r for r in rows if not r["source"] and r["video_id"].endswith("1"))
    fake = next(r for r in rows if r["source"] == source["video_id"])
    here = manifest.parent
    (here / "videos" / "broken.mp4").write_bytes(b"not a video")
    source = {**source, "path": "videos/broken.mp4"}
    _build(_write_manifest(here / "failed-s.csv", [source]), tmp_path / "out", processor, cfg)
    _build(_write_manifest(here / "failed-m.csv", [source, fake]), tmp_path / "out", processor, cfg)
    videos = _rows(tmp_path / "out", "videos")
    assert videos[(source["video_id"],)]["status"] == "error"
    row = videos[(fake["video_id"],)]
    assert (row["status"], row["detections"]) == ("ok", "detector")
    assert row["detections_note"].startswith(f"source {source['video_id']} not reused: source failed: ")


def test_a_retried_fake_reuses_its_source_committed_in_the_same_shard(corpus, setup, tmp_path) -> None:
    """`--retry-failed` redoes only the failed fake: its source, committed in the shard, is read back."""
    manifest, rows = corpus
    processor, cfg = setup
    here = manifest.parent
    source = next(r for r in rows if not r["source"] and r["video_id"].endswith("1"))
    fake = next(r for r in rows if r["source"] == source["video_id"])
    listed = _write_manifest(here / "retry.csv", [source, fake])
    fake_path = str(here / fake["path"])
    os.rename(fake_path, fake_path + ".away")
    try:
        _build(listed, tmp_path / "out", processor, cfg)
    finally:
        os.rename(fake_path + ".away", fake_path)
    assert _rows(tmp_path / "out", "videos")[(fake["video_id"],)]["status"] == "error"
    side_before = read_table_rows(tmp_path / "out")
    retried = _build(listed, tmp_path / "out", processor, cfg, retry_failed=True)
    assert retried["opened"] == [fake_path] and retried["stats"][0]["committed_sources"] == 1
    row = _rows(tmp_path / "out", "videos")[(fake["video_id"],)]
    assert (row["status"], row["detections"], row["detections_note"]) == ("ok", "source", None), row
    assert read_table_rows(tmp_path / "out") == side_before  # the source's detections kept as they were


def read_table_rows(out: Path) -> list[dict]:
    """Every committed `detections` row of the output (the side table; readers of rows never see it)."""
    state = read_state(*fsio.open_fs(str(out)))
    with Output.open(str(out), config=setup_cfg(), weights=WEIGHTS) as output:
        tables = [output.committed_rows(shard, "detections") for shard in sorted(state.markers)]
    return [row for table in tables for row in table.drop_columns(["shard"]).to_pylist()]
