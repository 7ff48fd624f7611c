"""Source-aware builds (tasks/sources.py): a fake reuses its source's verified detections.

The FF++-shaped synth corpus (`make_ffpp_corpus`) is processed twice by the same worker code
(`tasks.shard.process_videos`): per video, and source-aware. Every aligned fake must take its
source's detections and give the per-video build's rows (faces on the same frames and ranks, boxes
that agree, the same identities); every misaligned fake (shifted frames, another size, shorter) must
fall back to its own detection and give exactly the per-video rows; identities of a fake are linked
to the source's and labelled manipulated where the synth truth swapped that person's face.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import av
import numpy as np
import polars as pl
import pytest

from faceshard.app.synth import MISALIGNED, load_truth, make_ffpp_corpus
from faceshard.config import load_config
from faceshard.records import Detections, Face, Frame, VideoInfo, VideoTask
from faceshard.storage.manifest import load_manifest
from faceshard.storage.plan import PriorPlan, plan_build
from faceshard.tasks.pipeline import VideoProcessor, VideoResult
from faceshard.tasks.shard import process_videos
from faceshard.tasks.sources import (
    Misaligned,
    SourceDetections,
    SourceFaces,
    SourceMemory,
    box_iou,
    source_groups,
)
from tests.clips import write_video

FAST = ["depth.enabled=false", "embed.enabled=false", "runtime.device=cpu"]
# Row fields that differ by design where a fake reuses its source's detections (documented in
# tasks/sources.py and the README): the detector's score is the source's, and the provenance columns.
REUSE_FIELDS = {"score"}
VIDEO_NEUTRAL = {"seconds", "detections", "detections_note", "embedded"}


def _plan_shards(ids: list[str], sources: list[str | None], size: int) -> dict[int, list[str]]:
    plan = plan_build(pl.Series(ids), PriorPlan(), size, sources=pl.Series(sources, dtype=pl.String))
    out: dict[int, list[str]] = {}
    for row in plan.shards.iter_rows(named=True):
        out.setdefault(row["shard"], []).append(row["video_id"])
    return out


def test_plan_keeps_a_source_and_its_fakes_in_one_shard() -> None:
    ids = ["b", "a_x", "c", "a", "a_y", "d_1", "d_2", "d_3", "d_4", "d", "e"]
    sources = [None, "a", None, None, "a", "d", "d", "d", "d", None, None]
    shards = _plan_shards(ids, sources, 3)
    assert shards == {0: ["a", "a_x", "a_y"], 1: ["b", "c"], 2: ["d", "d_1", "d_2", "d_3", "d_4"], 3: ["e"]}
    # no links: exactly the per-video plan (ids sorted, runs of shard_size)
    plain = plan_build(pl.Series(ids), PriorPlan(), 3)
    linked_none = plan_build(
        pl.Series(ids), PriorPlan(), 3, sources=pl.Series([None] * len(ids), dtype=pl.String)
    )
    assert plain.shards.equals(linked_none.shards)


def test_source_groups_put_each_source_before_its_fakes() -> None:
    videos = [
        VideoTask(v, f"/{v}.mp4", int(s is not None), source=s)
        for v, s in [("a_1", "a"), ("b", None), ("a", None), ("z_1", "z"), ("a_2", "a")]
    ]
    groups = [[v.video_id for v in g] for g in source_groups(videos)]
    assert groups == [["a", "a_1", "a_2"], ["b"], ["z_1"]]  # z is not in the shard: its fake is alone


def _memory(boxes_per_frame: dict[int, list[list[float]]]) -> SourceMemory:
    memory = SourceMemory("src", info=VideoInfo(10.0, 64, 64, 10), usable=True)
    frames = [Frame(i, np.zeros((64, 64, 3), np.uint8)) for i in boxes_per_frame]
    dets = [
        Detections(np.array(b, np.float32).reshape(-1, 4), np.ones(len(b), np.float32))
        for b in boxes_per_frame.values()
    ]
    memory.record(frames, dets)
    return memory


def test_verification_checks_one_in_n_and_every_face_count_change() -> None:
    box = [10.0, 10.0, 30.0, 30.0]
    memory = _memory({i: [box] if i not in (5, 6) else [] for i in range(12)})
    assert memory.verify_frames(8) == {0, 5, 7, 8}  # 1 in 8, and where the count changes (5 and 7)
    seen: list[int] = []

    def detector(frames):
        seen.append(len(frames))
        return [Detections(np.array([box], np.float32), np.ones(1, np.float32)) for _ in frames]

    provider = SourceDetections(memory, detector, every=8, min_iou=0.9)
    out = provider([Frame(i, np.zeros((64, 64, 3), np.uint8)) for i in range(5)])
    assert [len(d) for d in out] == [1] * 5 and seen == [1]  # only frame 0 of 0-4 was checked, at once
    provider([Frame(i, np.zeros((64, 64, 3), np.uint8)) for i in (7, 8)])
    assert seen == [1]  # later checks are held and verified in one detector call
    provider.finish()
    assert seen == [1, 2]
    provider([Frame(5, np.zeros((64, 64, 3), np.uint8))])
    with pytest.raises(Misaligned, match="frame 5: 1 faces, the source has 0"):
        provider.finish()
    shifted = SourceDetections(
        memory,
        lambda fs: [
            Detections(np.array([[20.0, 10, 40, 30]], np.float32), np.ones(1, np.float32)) for _ in fs
        ],
        8,
        0.9,
    )
    with pytest.raises(Misaligned, match=r"IoU 0\.33"):
        shifted([Frame(0, np.zeros((64, 64, 3), np.uint8))])
    with pytest.raises(Misaligned, match="frame 40 was sampled"):
        provider([Frame(40, np.zeros((64, 64, 3), np.uint8))])


def test_a_reused_fake_takes_the_source_identities_and_embeds_a_sample() -> None:
    """`sources.embed_sample`: identity k of the fake is the source's identity k at the same (frame, rank);
    the embedder runs on `sample` faces per identity, spread over its frames, and scores those only."""
    memory = SourceMemory("src", usable=True)
    memory.identity = {(f, 0): 0 for f in range(10)} | {(f, 1): 1 for f in range(0, 10, 2)} | {(3, 2): -1}
    for key in memory.identity:
        memory.thumbs[key] = np.zeros((32, 32, 3), np.float32)
        memory.embeddings[key] = np.zeros(4, np.float32)
    embedded: list[tuple[int, int]] = []

    def embed(faces: list[Face]) -> list[Face]:
        for face in faces:
            face.id_embedding = np.full(4, 0.5, np.float32)
            embedded.append((face.frame, face.face))
        return faces

    stage = SourceFaces(memory, remember=False, metric="euclidean", embed=embed, sample=3)
    assert stage.carries_identities
    faces = [
        Face(f, r, np.zeros(4, np.float32), 1.0, 64, 64, crop=np.full((40, 40, 3), 255, np.uint8))
        for f, r in sorted(memory.identity)
    ]
    stage(faces[:7])  # the stage sees faces a batch at a time
    stage(faces[7:])
    assert [face.identity for face in faces] == [memory.identity[(f.frame, f.face)] for f in faces]
    assert sorted(embedded) == [(0, 0), (0, 1), (4, 0), (4, 1), (8, 1), (9, 0)]  # 3 per identity, spread
    assert set(stage.embed) == set(embedded) and set(stage.pixel) == set(memory.identity)
    assert all(v == pytest.approx(1.0) for v in stage.pixel.values())
    off = SourceFaces(memory, remember=False, metric="euclidean", embed=embed, sample=0)
    assert not off.carries_identities  # embed_sample=0: the fake's own faces are embedded and clustered


class CountingEmbedder:
    """The identity embedder, counting the faces it embeds per video (read and reset between videos)."""

    def __init__(self, embedder) -> None:
        self.embedder = embedder
        self.faces = 0

    def __call__(self, faces: list[Face]) -> list[Face]:
        self.faces += len(faces)
        return self.embedder(faces)

    def __getattr__(self, name: str):
        return getattr(self.embedder, name)


@pytest.fixture(scope="module")
def ffpp(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, VideoResult], dict[str, VideoResult], dict]:
    """The FF++-shaped corpus (2 sources, 4 aligned and 3 misaligned fakes each), processed per video and
    source-aware by the same processor, with the detector's frames counted."""
    manifest = make_ffpp_corpus(tmp_path_factory.mktemp("ffpp"), n_sources=2, seed=0)
    videos = load_manifest(str(manifest)).tasks()
    # 2 faces per identity (the default is 4): the synth clips sample 3-4 frames, so a sample of 4 is all
    processor = VideoProcessor(load_config("demo", overrides=[*FAST, "sources.embed_sample=2"]), device="cpu")
    per_video = {r.video["video_id"]: r for r in process_videos(processor, videos, 0, source_aware=False)}
    processor.identity = counting = CountingEmbedder(processor.identity)
    embedded: dict[str, int] = {}

    def count(video: VideoTask, result: VideoResult) -> None:
        embedded[video.video_id] = counting.faces
        counting.faces = 0

    aware = {r.video["video_id"]: r for r in process_videos(processor, videos, 0, True, on_video=count)}
    for video_id, n in embedded.items():
        aware[video_id].video["embedded"] = n  # read by the sample test, ignored by the row comparisons
    return manifest, per_video, aware, load_truth(manifest.parent)


def _aligned_fakes(truth: dict) -> list[str]:
    return [v for v, t in truth.items() if t["label"] == 1 and t["aligned"]]


def _track_of(face: dict, truth: dict) -> int:
    """The synth track a face row shows: the truth face its box overlaps most on that frame."""
    faces = truth["frames"][face["frame"]]["faces"]
    box = [face["x1"], face["y1"], face["x2"], face["y2"]]
    return int(faces[int(box_iou(np.array([box]), np.array([f["box"] for f in faces])).argmax())]["track"])


def _identity_tracks(result: VideoResult, truth: dict) -> dict[int, int]:
    votes: dict[int, Counter[int]] = {}
    for face in result.faces:
        votes.setdefault(face["identity"], Counter())[_track_of(face, truth)] += 1
    return {identity: c.most_common(1)[0][0] for identity, c in votes.items() if identity >= 0}


def test_aligned_fakes_reuse_the_source_and_give_the_per_video_rows(ffpp) -> None:
    _, per_video, aware, truth = ffpp
    fakes = _aligned_fakes(truth)
    assert len(fakes) == 8
    ious, untouched = [], []
    for video_id in fakes:
        got, want = aware[video_id], per_video[video_id]
        assert got.video["detections"] == "source" and got.video["detections_note"] is None, got.video
        assert {k: v for k, v in got.video.items() if k not in VIDEO_NEUTRAL} == {
            k: v for k, v in want.video.items() if k not in VIDEO_NEUTRAL
        }
        assert [(f["frame"], f["face"], f["identity"]) for f in got.faces] == [
            (f["frame"], f["face"], f["identity"]) for f in want.faces
        ]
        swapped = set(truth[video_id]["swapped_tracks"])
        for a, b in zip(got.faces, want.faces, strict=True):
            iou = float(
                box_iou(
                    np.array([[a[k] for k in ("x1", "y1", "x2", "y2")]]),
                    np.array([[b[k] for k in ("x1", "y1", "x2", "y2")]]),
                )[0, 0]
            )
            ious.append(iou)
            if _track_of(b, truth[video_id]) not in swapped:
                untouched.append(iou)
                # an untouched face: everything but the detector's score is the per-video row's
                same = {k for k in a if k not in REUSE_FIELDS and k not in ("x1", "y1", "x2", "y2", "crop")}
                assert {k: a[k] for k in same} == {k: b[k] for k in same} or iou < 0.95
        source = aware[truth[video_id]["source"]]
        assert [(f["frame"], f["face"]) for f in got.faces] == [(f["frame"], f["face"]) for f in source.faces]
    # The goal (IoU >= 0.95 for 99 % of faces) is below MTCNN's own noise floor: the same frames
    # encoded twice (crf 18 vs 23) give IoU >= 0.95 for only 66 % of synth faces (min 0.86) and 82 % of
    # the real fixture's (min 0.87), before any face is swapped (README, "Source-aware builds"). The
    # per-video box moves with that noise and more with a swapped-in face (0.8-0.9); the reused box is
    # the source's. Both are measured against the synth truth below: reuse must be as close to it.
    print(
        f"box IoU reused vs per-video: untouched {np.percentile(untouched, [0, 50]).round(3)}, all faces"
        f" {np.percentile(ious, [0, 50]).round(3)}, >= 0.95: {np.mean(np.array(ious) >= 0.95):.1%}"
    )
    assert min(untouched) >= 0.9 and np.median(untouched) >= 0.95, sorted(untouched)[:5]
    assert min(ious) >= 0.75, sorted(ious)[:5]


def _matched_ious(a: list[Detections], b: list[Detections]) -> list[float]:
    """IoU of each face of `a` with its Hungarian match in `b`, frame by frame (0 for an unmatched face)."""
    from scipy.optimize import linear_sum_assignment

    ious: list[float] = []
    for da, db in zip(a, b, strict=True):
        if len(da.boxes) and len(db.boxes):
            iou = box_iou(da.boxes, db.boxes)
            rows, cols = linear_sum_assignment(-iou)
            ious += [float(iou[r, c]) for r, c in zip(rows, cols, strict=True)]
        ious += [0.0] * (len(da.boxes) - min(len(da.boxes), len(db.boxes)))
    return ious


def _decoded(path: str) -> list[np.ndarray]:
    with av.open(path) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_reused_boxes_agree_with_per_video_ones_within_the_detectors_own_noise(
    ffpp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's box goal restated against what MTCNN itself can give: the same frames encoded twice
    and detected per video agree to IoU >= 0.95 on only part of their faces (its noise floor); on the
    faces a swap left untouched, the reused boxes agree with the fake's per-video boxes at least as
    often as that, and never worse than the floor's minimum (README, "Source-aware builds")."""
    import faceshard.app.synth as synth
    from faceshard.models.detectors import build_detector

    manifest, per_video, aware, truth = ffpp
    detector = build_detector(load_config("demo", overrides=FAST).detect, "cpu")
    monkeypatch.setitem(synth.X264_OPTIONS, "crf", "23")  # the corpus is crf 18: the same frames, re-encoded
    noise: list[float] = []
    for video in load_manifest(str(manifest)).tasks():
        if video.label == 0:
            frames = _decoded(video.path)
            synth._encode(tmp_path / f"{video.video_id}.mp4", frames)
            again = _decoded(str(tmp_path / f"{video.video_id}.mp4"))
            noise += _matched_ious(detector(frames), detector(again))  # every frame: a wider sample
    untouched = []
    for video_id in _aligned_fakes(truth):
        swapped = set(truth[video_id]["swapped_tracks"])
        for a, b in zip(aware[video_id].faces, per_video[video_id].faces, strict=True):
            if _track_of(b, truth[video_id]) not in swapped:
                boxes = [np.array([[f[k] for k in ("x1", "y1", "x2", "y2")]]) for f in (a, b)]
                untouched.append(float(box_iou(*boxes)[0, 0]))
    floor, reused = np.mean(np.array(noise) >= 0.95), np.mean(np.array(untouched) >= 0.95)
    print(
        f"IoU >= 0.95: per-video vs itself re-encoded {floor:.0%} of {len(noise)} faces (min {min(noise):.3f});"
        f" reused vs per-video, untouched faces {reused:.0%} of {len(untouched)} (min {min(untouched):.3f})"
    )
    assert len(noise) >= 40 and len(untouched) >= 10
    assert floor < 0.99  # the goal as the issue states it is below the detector's own noise
    assert reused >= floor - 0.05 and min(untouched) >= min(noise) - 0.05


def test_reused_boxes_are_as_close_to_the_truth_as_the_fakes_own(ffpp) -> None:
    _, per_video, aware, truth = ffpp
    reused, own = [], []
    for video_id in _aligned_fakes(truth):
        for result, out in ((aware[video_id], reused), (per_video[video_id], own)):
            for face in result.faces:
                boxes = [f["box"] for f in truth[video_id]["frames"][face["frame"]]["faces"]]
                box = [face[k] for k in ("x1", "y1", "x2", "y2")]
                out.append(float(box_iou(np.array([box]), np.array(boxes)).max()))
    print(
        f"IoU with the truth box: reused {np.mean(reused):.3f}, the fake's own detection {np.mean(own):.3f}"
    )
    # measured 0.899 vs 0.928: a swap pastes the new face onto the truth box itself, so the detector finds
    # it there; the reused box is the detector's box of the original face at that place
    assert np.mean(reused) >= max(0.85, np.mean(own) - 0.05) and min(reused) >= 0.6


def test_misaligned_fakes_fall_back_and_say_why(ffpp) -> None:
    _, per_video, aware, truth = ffpp
    reasons = {"shifted": "IoU", "resized": "size", "shorter": "frames"}
    for video_id, t in truth.items():
        if t["method"] not in MISALIGNED:
            continue
        got, want = aware[video_id], per_video[video_id]
        assert got.video["detections"] == "detector", got.video
        assert reasons[t["method"]] in got.video["detections_note"], got.video["detections_note"]
        assert {k: v for k, v in got.video.items() if k not in VIDEO_NEUTRAL} == {
            k: v for k, v in want.video.items() if k not in VIDEO_NEUTRAL
        }
        assert got.faces == want.faces
        assert all(i.get("source_identity") is None for i in got.identities)


def test_identities_line_up_with_the_source(ffpp) -> None:
    _, _, aware, truth = ffpp
    for video_id in _aligned_fakes(truth):
        source_id = truth[video_id]["source"]
        fake_tracks = _identity_tracks(aware[video_id], truth[video_id])
        source_tracks = _identity_tracks(aware[source_id], truth[source_id])
        track_identity = {track: identity for identity, track in source_tracks.items()}
        for row in aware[video_id].identities:
            assert row["source_identity"] == track_identity[fake_tracks[row["identity"]]], (video_id, row)


def test_the_swapped_identity_is_labelled_manipulated_and_the_other_untouched(ffpp) -> None:
    _, _, aware, truth = ffpp
    right = total = 0
    two_person = 0
    for video_id in _aligned_fakes(truth):
        tracks = _identity_tracks(aware[video_id], truth[video_id])
        swapped = set(truth[video_id]["swapped_tracks"])
        two_person += len(tracks) == 2
        for row in aware[video_id].identities:
            total += 1
            right += row["manipulated"] == (tracks[row["identity"]] in swapped)
    assert two_person >= 4  # the case that matters: one of two identities swapped
    assert right / total >= 0.95, (right, total)


def test_a_reused_fake_embeds_only_a_sample_of_its_faces(ffpp) -> None:
    """The identity embedder ran on every face of a source and of a fake that fell back, and on at most
    `sources.embed_sample` (2 here) faces per identity of a reused fake."""
    _, _, aware, _ = ffpp
    for result in aware.values():
        n_faces, n_ids = len(result.faces), result.video["n_identities"]
        if result.video["detections"] == "source":
            assert result.video["embedded"] <= 2 * n_ids < n_faces, result.video
        else:
            assert result.video["embedded"] == n_faces, result.video


def test_source_aware_runs_the_detector_on_far_fewer_frames(ffpp) -> None:
    _, per_video, aware, truth = ffpp
    aligned = [v for v, t in truth.items() if t["aligned"]]  # sources and their aligned fakes
    before = sum(per_video[v].detector_frames for v in aligned)
    after = sum(aware[v].detector_frames for v in aligned)
    assert after * 2 <= before, (before, after)


def test_a_real_clip_and_its_altered_copy(shared_fixtures: Path, tmp_path: Path) -> None:
    """Real footage: a fake made of the clip's own frames with one person's face mirrored in place reuses
    the clip's detections, keeps its faces, labels the mirrored identity and not the other."""
    frames = []
    with av.open(str(shared_fixtures / "forgerynet_fake_2_faces.mp4")) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == 30:
                break
    source = write_video(tmp_path / "source.mp4", frames)
    processor = VideoProcessor(load_config("demo", overrides=FAST), device="cpu")
    src_task = VideoTask("source", str(source), 0)
    alone = processor(src_task, 0)
    assert alone.video["n_identities"] == 2, alone.video
    target = alone.identities[0]["identity"]
    boxes = {f["frame"]: [f["x1"], f["y1"], f["x2"], f["y2"]] for f in alone.faces if f["identity"] == target}
    altered = []
    for i, rgb in enumerate(frames):
        rgb = rgb.copy()
        x1, y1, x2, y2 = (int(v) for v in boxes[max(k for k in boxes if k <= i)])
        rgb[y1:y2, x1:x2] = rgb[y1:y2, x1:x2][:, ::-1]
        altered.append(rgb)
    fake = write_video(tmp_path / "fake.mp4", altered)
    fake_task = VideoTask("fake", str(fake), 1, source="source")
    alone_fake = processor(fake_task, 0)
    aware = {r.video["video_id"]: r for r in process_videos(processor, [fake_task, src_task], 0, True)}
    got = aware["fake"]
    assert got.video["detections"] == "source", got.video
    assert [(f["frame"], f["face"]) for f in got.faces] == [(f["frame"], f["face"]) for f in alone_fake.faces]
    ious = [
        float(
            box_iou(
                np.array([[a[k] for k in ("x1", "y1", "x2", "y2")]]),
                np.array([[b[k] for k in ("x1", "y1", "x2", "y2")]]),
            )[0, 0]
        )
        for a, b in zip(got.faces, alone_fake.faces, strict=True)
    ]
    assert min(ious) >= 0.8, ious
    labels = {row["source_identity"]: row["manipulated"] for row in got.identities}
    assert labels == {target: True, 1 - target: False}, got.identities


def test_mintime_samples_can_carry_identity_labels(tmp_path: Path) -> None:
    """`SampleOptions(identity_labels=True)`: a fake's identity labelled untouched trains as 0 in its slots,
    while `label` stays the video's; off by default."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from faceshard.storage.commit import Output
    from faceshard.storage.datasets import SampleOptions, ShardDataset
    from faceshard.storage.manifest import plan_shards
    from faceshard.storage.testing import fake_shard_tables, fake_videos

    out = Output.open(str(tmp_path / "out"), config={}, weights={})
    plans = plan_shards(fake_videos(4, splits=("train",)), 4)
    out.set_plan(plans)
    tables = fake_shard_tables(plans[0], faces_per_video=3)
    fakes = [v.video_id for v in plans[0].videos if v.label == 1]
    ids = tables["identities"]
    untouched = pc.equal(ids["video_id"], fakes[0])
    column = pa.array([False if flag else None for flag in untouched.to_pylist()], pa.bool_())
    tables["identities"] = ids.set_column(ids.schema.get_field_index("manipulated"), "manipulated", column)
    out.commit_shard(plans[0], tables, {})
    plain = {s["video_id"]: s for s in ShardDataset(str(tmp_path / "out"), shuffle=False)}
    assert all("identity_label" not in s for s in plain.values())
    labelled = ShardDataset(str(tmp_path / "out"), shuffle=False, options=SampleOptions(identity_labels=True))
    for s in labelled:
        expected = 0 if s["video_id"] == fakes[0] else int(s["label"])
        assert s["identity_label"][:3].tolist() == [expected] * 3 and s["identity_label"][3:].eq(-1).all()
        assert s["label"].item() == (s["video_id"] in fakes)


def test_the_pipeline_heart_has_no_nested_closures() -> None:
    """The chain is small objects and generators read top to bottom: no function defined inside another,
    no `nonlocal` (the feedback loop of the sampling policy lives in tasks/sampling.py)."""
    import ast

    import faceshard.tasks.pipeline as pipeline

    tree = ast.parse(Path(pipeline.__file__).read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    nested = [
        (outer.name, inner.name)
        for outer in functions
        for inner in ast.walk(outer)
        if inner is not outer and isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    assert nested == []
    assert not any(isinstance(n, ast.Nonlocal) for n in ast.walk(tree))
