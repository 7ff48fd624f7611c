"""The synthetic corpus is only useful if its truth is true: real detectors find the boxes it claims,
dlib tells its persons apart, and the same seed gives the same corpus."""

from __future__ import annotations

import csv
import importlib.util
import itertools
from pathlib import Path

import av
import numpy as np
import pytest

from faceshard.app.synth import FAKE_METHOD, FPS, load_truth, make_corpus, write_broken_samples

SAMPLE_EVERY = 6  # frames checked by the (slow, CPU) detector and identity model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three clips: 1 person real, 2 persons fake, 3 persons real."""
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root, n_videos=3, seed=0)
    return root


@pytest.fixture(scope="module")
def decoded(corpus: Path) -> dict[str, list[np.ndarray]]:
    frames = {}
    for video_id, truth in load_truth(corpus).items():
        with av.open(str(corpus / truth["path"])) as container:
            frames[video_id] = [
                np.ascontiguousarray(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)
            ]
    return frames


def _read_manifest(root: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (root / "manifest.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _chroma_format_idc(path: Path) -> int:
    """H.264 SPS chroma_format_idc (0 = monochrome, 1 = 4:2:0), read from the MP4's avcC record."""
    with av.open(str(path)) as container:
        avcc = container.streams.video[0].codec_context.extradata
    sps_length = int.from_bytes(avcc[6:8], "big")
    sps = avcc[8 : 8 + sps_length]
    assert sps[1] in (100, 110, 122, 244)  # High profiles: the only ones that carry chroma_format_idc
    bits = "".join(f"{byte:08b}" for byte in sps[4:])
    position = 0
    values = []
    for _ in range(2):  # seq_parameter_set_id, then chroma_format_idc, both Exp-Golomb ue(v)
        zeros = 0
        while bits[position] == "0":
            zeros, position = zeros + 1, position + 1
        values.append(int(bits[position : position + zeros + 1], 2) - 1)
        position += zeros + 1
    return values[1]


def _sampled_frames(truth: dict) -> list[int]:
    """Every SAMPLE_EVERY-th frame plus a few swapped ones: what the slow CPU models look at."""
    fake = truth["fake_frames"]
    return sorted(set(range(0, truth["n_frames"], SAMPLE_EVERY)) | set(fake[:: max(1, len(fake) // 3)]))


def _corpus_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_same_corpus_and_another_seed_a_different_one(corpus: Path, tmp_path: Path) -> None:
    make_corpus(tmp_path / "again", n_videos=3, seed=0)
    make_corpus(tmp_path / "other", n_videos=3, seed=1)
    first, again, other = (
        _corpus_bytes(corpus),
        _corpus_bytes(tmp_path / "again"),
        _corpus_bytes(tmp_path / "other"),
    )

    assert set(first) == {"manifest.csv", *(f"truth/synth_00{k}.json" for k in range(3))} | {
        f"videos/synth_00{k}.mp4" for k in range(3)
    }
    assert first == again  # manifest, truth and the encoded videos, byte for byte
    assert set(other) == set(first)
    for k in range(3):
        assert other[f"truth/synth_00{k}.json"] != first[f"truth/synth_00{k}.json"]
        assert other[f"videos/synth_00{k}.mp4"] != first[f"videos/synth_00{k}.mp4"]


def test_clip_does_not_depend_on_corpus_size(corpus: Path, tmp_path: Path) -> None:
    make_corpus(tmp_path / "one", n_videos=1, seed=0)
    assert (tmp_path / "one/videos/synth_000.mp4").read_bytes() == (
        corpus / "videos/synth_000.mp4"
    ).read_bytes()


def test_manifest_has_exact_columns_and_matches_truth(corpus: Path) -> None:
    columns, rows = _read_manifest(corpus)
    truth = load_truth(corpus)

    assert columns == ["path", "label", "method", "split"]
    assert [r["path"] for r in rows] == [f"videos/synth_00{k}.mp4" for k in range(3)]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for row in rows:
        record = truth[Path(row["path"]).stem]
        assert (corpus / row["path"]).is_file()
        assert int(row["label"]) == record["label"]
        assert row["method"] == (FAKE_METHOD if record["label"] == 1 else "")
        assert row["split"] == record["split"]
    assert sorted(len(t["persons"]) for t in truth.values()) == [1, 2, 3]
    assert sum(t["label"] for t in truth.values()) >= 1


def test_default_corpus_has_real_and_fake_clips_of_one_two_and_three_persons(tmp_path: Path) -> None:
    manifest = make_corpus(tmp_path)
    truth = load_truth(tmp_path)

    assert manifest == tmp_path / "manifest.csv" and len(truth) == 6
    assert {(len(t["persons"]), t["label"]) for t in truth.values()} == {
        (n, label) for n in (1, 2, 3) for label in (0, 1)
    }
    for t in truth.values():
        swapped_in = {f["person"] for fr in t["frames"] for f in fr["faces"] if f["swapped_from"]}
        assert t["n_identities"] == len(set(t["persons"]) | swapped_in)
        if t["label"] == 1 and len(t["persons"]) < 3:  # the swapped-in face is someone not on screen
            assert t["n_identities"] == len(t["persons"]) + 1


def test_corpus_size_outside_1_to_100_and_negative_seed_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_corpus(tmp_path, n_videos=0)
    with pytest.raises(ValueError):
        make_corpus(tmp_path, n_videos=101)
    with pytest.raises(ValueError):
        make_corpus(tmp_path, n_videos=1, seed=-1)
    assert not (tmp_path / "manifest.csv").exists()


def test_truth_is_self_consistent(corpus: Path) -> None:
    for truth in load_truth(corpus).values():
        width, height = truth["width"], truth["height"]
        assert len(truth["frames"]) == truth["n_frames"]
        assert 30 <= truth["n_frames"] <= 40 and truth["fps"] == FPS
        shown = set()
        for index, frame in enumerate(truth["frames"]):
            assert frame["frame"] == index
            assert [f["track"] for f in frame["faces"]] == list(range(len(truth["persons"])))
            for face in frame["faces"]:
                x1, y1, x2, y2 = face["box"]
                assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
                assert y2 - y1 >= 40  # big enough for MTCNN's min_face_size=20 with room to spare
                assert face["area_ratio"] == int(100 * (x2 - x1) * (y2 - y1) / (width * height))
                owner = truth["persons"][face["track"]]
                if index in truth["fake_frames"]:
                    assert face["swapped_from"] in (None, owner)
                else:
                    assert face["swapped_from"] is None and face["person"] == owner
                if face["swapped_from"] is not None:
                    assert face["person"] != owner
                shown.add(face["person"])
            # distinct persons stay apart on screen
            for a, b in itertools.combinations(frame["faces"], 2):
                assert _iou(a["box"], b["box"]) == 0
        assert truth["n_identities"] == len(shown)
        assert len(set(truth["persons"])) == len(truth["persons"])
        if truth["label"] == 1:
            swapped = [f for fr in truth["frames"] for f in fr["faces"] if f["swapped_from"]]
            assert len(swapped) == len(truth["fake_frames"]) > 0
        else:
            assert truth["fake_frames"] == []
        sides = [f["box"][3] - f["box"][1] for fr in truth["frames"] for f in fr["faces"]]
        assert max(sides) - min(sides) >= 10  # faces change size over the clip


def test_clips_decode_with_pyav_to_the_frames_the_truth_lists(corpus: Path, decoded: dict) -> None:
    for video_id, truth in load_truth(corpus).items():
        with av.open(str(corpus / truth["path"])) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert stream.codec_context.pix_fmt == "yuv420p"
            assert stream.average_rate == FPS
        frames = decoded[video_id]
        assert len(frames) == truth["n_frames"]
        assert frames[0].shape == (truth["height"], truth["width"], 3)
        assert not np.array_equal(frames[0], frames[-1])  # things move


def test_mtcnn_finds_every_truth_face(corpus: Path, decoded: dict) -> None:
    from facenet_pytorch import MTCNN
    from PIL import Image

    detector = MTCNN(keep_all=True, thresholds=[0.85, 0.95, 0.95], min_face_size=20, device="cpu")
    checked = 0
    for video_id, truth in load_truth(corpus).items():
        indices = _sampled_frames(truth)
        batch_boxes, _ = detector.detect([Image.fromarray(decoded[video_id][i]) for i in indices])
        for index, boxes in zip(indices, batch_boxes, strict=True):
            found = [] if boxes is None else [np.asarray(b, dtype=float).tolist() for b in boxes]
            faces = truth["frames"][index]["faces"]
            assert len(found) == len(faces), (video_id, index)
            for face in faces:
                assert max(_iou(face["box"], b) for b in found) > 0.5, (video_id, index, face)
                checked += 1
    assert checked >= 20


def test_dlib_separates_persons_at_its_usual_threshold(corpus: Path, decoded: dict) -> None:
    import dlib

    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.submodule_search_locations
    models = Path(spec.submodule_search_locations[0]) / "models"
    landmarks = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    encoder = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    names, vectors = [], []
    for video_id, truth in load_truth(corpus).items():
        for index in _sampled_frames(truth):
            rgb = decoded[video_id][index]
            for face in truth["frames"][index]["faces"]:
                shape = landmarks(rgb, dlib.rectangle(*face["box"]))
                vectors.append(np.array(encoder.compute_face_descriptor(rgb, shape)))
                names.append(face["person"])

    vectors_arr = np.stack(vectors)
    distances = np.linalg.norm(vectors_arr[:, None] - vectors_arr[None], axis=-1)
    same = np.equal.outer(names, names)
    assert len(set(names)) >= 3
    assert distances[same].max() < 0.6
    assert distances[~same].min() > 0.6


def test_broken_samples_each_break_in_their_own_way(tmp_path: Path) -> None:
    paths = write_broken_samples(tmp_path)

    def frames_of(path: Path) -> list[np.ndarray]:
        with av.open(str(path)) as container:
            return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]

    good = frames_of(paths["good"])
    assert len(good) == 20
    assert paths["empty"].stat().st_size == 0
    for name in ("empty", "truncated", "text"):
        with pytest.raises((av.FFmpegError, av.error.InvalidDataError)):
            frames_of(paths[name])
    assert paths["truncated"].read_bytes() == paths["good"].read_bytes()[: paths["truncated"].stat().st_size]
    with av.open(str(paths["audio_only"])) as container:
        assert len(container.streams.video) == 0 and len(container.streams.audio) == 1
    assert paths["directory"].is_dir() and paths["directory"].suffix == ".mp4"
    corrupt = paths["corrupt_middle"].read_bytes()
    assert len(corrupt) == paths["good"].stat().st_size and corrupt != paths["good"].read_bytes()
    with av.open(str(paths["corrupt_middle"])) as container:  # the container is intact...
        assert container.streams.video[0].frames == 20
        try:  # ...the frame data is not: decoding fails, or yields other pixels
            survived = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            intact = len(survived) == 20 and all(map(np.array_equal, survived, good))
        except av.error.InvalidDataError:
            intact = False
    assert not intact
    assert frames_of(paths["tiny_frames"])[0].shape == (16, 16, 3)
    assert len(frames_of(paths["one_frame"])) == 1
    assert _chroma_format_idc(paths["monochrome"]) == 0
    assert _chroma_format_idc(paths["grayscale"]) == _chroma_format_idc(paths["good"]) == 1
    for name in ("grayscale", "monochrome"):
        gray = frames_of(paths[name])[5].astype(int)
        assert gray.std() > 10  # a picture, not a flat field...
        assert np.abs(np.diff(gray, axis=2)).max() <= 2  # ...with no colour
    odd = paths["odd_name"].name
    assert " " in odd and '"' in odd and "'" in odd and not odd.isascii()
    assert len(frames_of(paths["odd_name"])) == 20
    assert paths["symlink"].is_symlink() and paths["symlink"].resolve() == paths["good"].resolve()
    assert len(frames_of(paths["symlink"])) == 20
