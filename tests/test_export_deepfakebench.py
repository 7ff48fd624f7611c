"""`faceshard export` read by DeepfakeBench's own rules, transcribed here from its code (not ours).

Sources (github.com/SCLBD/DeepfakeBench, cloned read-only at /work/ext/deepfakebench):
* training/dataset/abstract_dataset.py — `collect_img_and_label_for_one_dataset` (161-280: JSON
  shape, compression nesting 190-196, label check 204-206, sort key 209-212, frame_num 214-226,
  clips 229-265), `load_rgb` path rule (298-299), `__getitem__` landmark/mask paths (485-486).
* preprocessing/preprocess.py — alignment points (109-113), template and warp (129-166), the check
  on the aligned crop (198-202), frame file names (322-331).
* preprocessing/rearrange.py — dataset/label names and splits per dataset (85-95, 126-255, 299-335,
  371-413); training/config/train_config.yaml — `label_dict`.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import skimage.data
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import transform as sktransform
from typer.testing import CliRunner

from faceshard.app.cli import app
from faceshard.config import CropConfig
from faceshard.records import Detections, Frame, VideoTask
from faceshard.storage.commit import Output
from faceshard.storage.manifest import plan_shards
from faceshard.storage.sequences import deepfakebench_clip_rows
from faceshard.storage.testing import fake_shard_tables
from faceshard.tasks.crops import Cropper

# ---- DeepfakeBench's rules, transcribed ------------------------------------------------------------

# abstract_dataset.py:193 (the names whose split level holds compression levels)
DFB_FF_NESTED = ["FF-DF", "FF-F2F", "FF-FS", "FF-NT", "FaceForensics++", "DeepFakeDetection", "FaceShifter"]
# training/config/train_config.yaml label_dict (lines 11-43)
DFB_LABEL_DICT = {
    "DFD_fake": 1, "DFD_real": 0, "FF-SH": 1, "FF-F2F": 1, "FF-DF": 1, "FF-FS": 1, "FF-NT": 1, "FF-FH": 1,
    "FF-real": 0, "CelebDFv1_real": 0, "CelebDFv1_fake": 1, "CelebDFv2_real": 0, "CelebDFv2_fake": 1,
    "DFDCP_Real": 0, "DFDCP_FakeA": 1, "DFDCP_FakeB": 1, "DFDC_Fake": 1, "DFDC_Real": 0, "DF_fake": 1,
    "DF_real": 0, "UADFV_Fake": 1, "UADFV_Real": 0, "roop_Real": 0, "roop_Fake": 1,
}  # fmt: skip
RGB_DIR = "./datasets/rgb"  # train_config.yaml rgb_dir


def dfb_resolve(file_path: str) -> str:
    """load_rgb (abstract_dataset.py:298-299)."""
    if file_path[0] != ".":
        file_path = f"./{RGB_DIR}\\" + file_path
    return file_path


def dfb_side_paths(image_path: str) -> tuple[str, str]:
    """__getitem__ (abstract_dataset.py:485-486): (mask path, landmark path)."""
    return image_path.replace("frames", "masks"), image_path.replace("frames", "landmarks").replace(
        ".png", ".npy"
    )


def dfb_sorted(frame_paths: list[str]) -> list[str]:
    """abstract_dataset.py:209-212."""
    if "\\" in frame_paths[0]:
        return sorted(frame_paths, key=lambda x: int(x.split("\\")[-1].split(".")[0]))
    return sorted(frame_paths, key=lambda x: int(x.split("/")[-1].split(".")[0]))


def dfb_items(frame_paths: list[str], frame_num: int, video_level: bool, clip_size: int | None) -> list[Any]:
    """abstract_dataset.py:214-273 in test mode (no random draws): frames, or clips of frames."""
    total_frames = len(frame_paths)
    if frame_num < total_frames:
        total_frames = frame_num
        if video_level:
            start_frame = 0
            frame_paths = frame_paths[start_frame : start_frame + frame_num]
        else:
            step = total_frames // frame_num
            frame_paths = [frame_paths[i] for i in range(0, total_frames, step)][:frame_num]
    if not video_level:
        return list(frame_paths)
    assert clip_size is not None
    if total_frames < clip_size:
        return []
    selected_clips = []
    num_clips = total_frames // clip_size
    if num_clips > 1:
        clip_step = (total_frames - clip_size) // (num_clips - 1)
        for i in range(num_clips):
            start_frame = i * clip_step
            selected_clips.append(frame_paths[start_frame : start_frame + clip_size])
    else:
        selected_clips.append(frame_paths[0:clip_size])
    return selected_clips


def dfb_collect(
    json_folder: str,
    dataset_name: str,
    mode: str,
    compression: str = "c23",
    frame_num: int = 32,
    video_level: bool = False,
    clip_size: int | None = None,
) -> list[tuple[str, int, Any]]:
    """collect_img_and_label_for_one_dataset (161-273): (unique video name, label, frame or clip)."""
    with open(os.path.join(json_folder, dataset_name + ".json")) as f:
        dataset_info = json.load(f)
    out = []
    for label in dataset_info[dataset_name]:
        sub_dataset_info = dataset_info[dataset_name][label][mode]
        if dataset_name in DFB_FF_NESTED:
            sub_dataset_info = sub_dataset_info[compression]
        for video_name, video_info in sub_dataset_info.items():
            unique_video_name = video_info["label"] + "_" + video_name
            if video_info["label"] not in DFB_LABEL_DICT:
                raise ValueError(f"Label {video_info['label']} is not found in the configuration file.")
            frame_paths = dfb_sorted(video_info["frames"])
            for item in dfb_items(frame_paths, frame_num, video_level, clip_size):
                out.append((unique_video_name, DFB_LABEL_DICT[video_info["label"]], item))
    return out


def dfb_template(size: int = 256, scale: float = 1.3) -> np.ndarray:
    """preprocess.py:128-154: the 5-point destination."""
    dst = np.array(
        [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]],
        dtype=np.float32,
    )
    dst[:, 0] += 8.0
    dst[:, 0] = dst[:, 0] * size / 112
    dst[:, 1] = dst[:, 1] * size / 112
    margin = size * (scale - 1) / 2.0
    dst += margin
    dst *= size / (size + 2 * margin)
    return dst


def dlib_models() -> tuple[Any, Any]:
    import dlib

    from faceshard.models.landmarks import predictor_path

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor_path()))


def dfb_align(rgb: np.ndarray, rect: Any, detector: Any, predictor: Any) -> tuple[np.ndarray | None, Any]:
    """extract_aligned_face_dlib (preprocess.py:104-204) on a given face: (BGR crop or None, landmarks)."""
    shape = predictor(rgb, rect)
    src = np.array([[shape.part(i).x, shape.part(i).y] for i in (37, 44, 30, 49, 55)], np.float32)
    tform = sktransform.SimilarityTransform()
    with warnings.catch_warnings():  # scikit-image 0.26 deprecates estimate(); DeepfakeBench calls it
        warnings.simplefilter("ignore", FutureWarning)
        tform.estimate(src, dfb_template())
    cropped = cv2.cvtColor(cv2.warpAffine(rgb, tform.params[0:2, :], (256, 256)), cv2.COLOR_RGB2BGR)
    found = detector(cropped, 1)
    if len(found) == 0:
        return None, None
    points = predictor(cropped, found[0])
    return cropped, np.array([[points.part(i).x, points.part(i).y] for i in range(points.num_parts)])


@pytest.fixture(scope="module", autouse=True)
def no_local_81_point_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Where a user's 81-point model would be found ($XDG_CACHE_HOME/faceshard): empty in these tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


# ---- clips -------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(st.integers(0, 5000), unique=True, min_size=1, max_size=90),
    others=st.integers(0, 5),
    frame_num=st.sampled_from([4, 8, 16, 32, 300]),
    clip=st.integers(1, 17),
    seed=st.integers(0, 2**16),
)
def test_clips_are_cut_as_deepfakebench_cuts_them(
    frames: list[int], others: int, frame_num: int, clip: int, seed: int
) -> None:
    rng = random.Random(seed)
    rows = [(f, 0) for f in frames] + [(rng.choice(frames), 1) for _ in range(others if frames else 0)]
    rng.shuffle(rows)
    frame = np.array([r[0] for r in rows], np.int64)
    face = np.array([r[1] for r in rows], np.int64)
    ours = deepfakebench_clip_rows(frame, face, frame_num, clip)
    paths = [f"./x/frames/v/{f:03d}.png" for f in frames]
    rng.shuffle(paths)  # the JSON order is os.scandir's; DeepfakeBench sorts
    theirs = dfb_items(dfb_sorted(paths), frame_num, True, clip)
    assert [[f"./x/frames/v/{frame[r]:03d}.png" for r in clip_rows] for clip_rows in ours] == theirs
    assert ours.shape[1:] == (clip,) and bool(np.all(face[ours] == 0))


# ---- export: a store with real aligned face crops --------------------------------------------------


@pytest.fixture(scope="module")
def face_pngs() -> dict[str, Any]:
    """Aligned crops (PNG, RGB content) DeepfakeBench would keep, one it would drop, and their landmarks."""
    detector, predictor = dlib_models()
    rgb = skimage.data.astronaut()
    crops: list[bytes] = []
    landmarks: list[np.ndarray] = []
    for variant in (rgb, np.ascontiguousarray(rgb[:, ::-1]), (rgb * 0.8).astype(np.uint8)):
        rect = max(detector(variant, 1), key=lambda r: r.width() * r.height())
        bgr, points = dfb_align(variant, rect, detector, predictor)
        assert bgr is not None
        crops.append(cv2.imencode(".png", bgr)[1].tobytes())
        landmarks.append(points)
    blank = cv2.imencode(".png", np.full((256, 256, 3), 90, np.uint8))[1].tobytes()
    return {"faces": crops, "landmarks": landmarks, "blank": blank}


def random_videos(rng: random.Random) -> list[VideoTask]:
    """FF++ (youtube, actors, four methods, FaceShifter, DFD), Celeb-DF, DFDC and a generic dataset."""
    videos = []
    splits = ("train", "val", "test")
    for i in range(rng.randint(2, 4)):
        for kind in ("youtube", "actors") if i < 2 else ("youtube",):
            vid = f"{i:03d}" if kind == "youtube" else f"{i:02d}__walk"
            path = f"/d/FaceForensics++/original_sequences/{kind}/c23/videos/{vid}.mp4"
            videos.append(
                VideoTask(
                    vid if kind == "youtube" else f"a{vid}", path, 0, None, rng.choice(splits), dataset="ffpp"
                )
            )
    for method in rng.sample(
        ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter", "DeepFakeDetection"], 3
    ):
        stem = (
            "01_02__walk__ABCDEF12"
            if method == "DeepFakeDetection"
            else f"{rng.randint(0, 3):03d}_00{rng.randint(4, 9)}"
        )
        path = f"/d/FaceForensics++/manipulated_sequences/{method}/c23/videos/{stem}.mp4"
        videos.append(VideoTask(f"{method}/{stem}", path, 1, method, rng.choice(splits), dataset="ffpp"))
    for folder, label in (("Celeb-real", 0), ("YouTube-real", 0), ("Celeb-synthesis", 1)):
        stem = "id0_id1_0000" if label else f"{folder[:2]}0000"
        split = rng.choice(("train", "val", "test"))
        videos.append(
            VideoTask(
                stem,
                f"/d/Celeb-DF-v2/{folder}/{stem}.mp4",
                label,
                folder if label else None,
                split,
                dataset="celebdf",
            )
        )
    for part, label in (("train/dfdc_train_part_3", 0), ("train/dfdc_train_part_3", 1), ("test", 1)):
        stem = f"dfdc{label}{part[-1]}"
        split = "test" if part == "test" else rng.choice(("train", "val"))
        videos.append(VideoTask(stem, f"/d/DFDC/{part}/{stem}.mp4", label, None, split, dataset="dfdc"))
    for k in range(2):
        videos.append(
            VideoTask(f"g{k}", f"/d/mine/{k}/clip.avi", k, None, rng.choice(splits), dataset="mine")
        )
    return videos


def committed_store(
    root: Path, videos: list[VideoTask], pngs: dict[str, Any], rng: random.Random
) -> tuple[str, dict]:
    """Commit `videos`, each with 0-12 frames whose crops are faces or blanks: (uri, {(video, frame): crop index})."""
    out = Output.open(str(root), config={"crop": {"save": True}}, weights={})
    plans = plan_shards(videos, 5)
    out.set_plan(plans)
    chosen: dict[tuple[str, int], int] = {}
    for plan in plans:
        tables = fake_shard_tables(plan, faces_per_video=12, emb_dim=None, with_crop=True)
        faces = tables["faces"]
        keep, crops = [], []
        for i, (vid, frame) in enumerate(
            zip(faces["video_id"].to_pylist(), faces["frame"].to_pylist(), strict=True)
        ):
            if rng.random() < 0.3:
                continue  # a frame the build never found a face in
            keep.append(i)
            k = rng.choice([0, 1, 2, 2, -1])  # -1: a crop DeepfakeBench drops
            chosen[(vid, frame)] = k
            crops.append(pngs["blank"] if k < 0 else pngs["faces"][k])
        faces = faces.take(pa.array(keep, pa.int64()))
        index = faces.schema.get_field_index("crop")
        tables["faces"] = faces.set_column(index, faces.schema.field(index), pa.array(crops, pa.binary()))
        out.commit_shard(plan, tables, {})
    return str(root), chosen


FF_LABEL = {"Deepfakes": "FF-DF", "Face2Face": "FF-F2F", "FaceSwap": "FF-FS", "NeuralTextures": "FF-NT",
            "FaceShifter": "FF-FH", "DeepFakeDetection": "DFD_fake"}  # fmt: skip  # rearrange.py:85-95


def dfb_label(v: VideoTask) -> str:
    """The label rearrange.py gives a video (85-95, 305-308, 373-410; UADFV-style for other datasets)."""
    if v.dataset == "ffpp":
        return ("DFD_real" if "/actors/" in v.path else "FF-real") if v.label == 0 else FF_LABEL[v.method]
    if v.dataset == "celebdf":
        return "CelebDFv2_fake" if v.label else "CelebDFv2_real"
    if v.dataset == "dfdc":
        return "DFDC_Fake" if v.label else "DFDC_Real"
    return f"{v.dataset}_{'Fake' if v.label else 'Real'}"


def dfb_folder(v: VideoTask) -> str:
    """preprocess.py:322 `save_path / 'frames' / stem` with save_path the sub-dataset folder (441-488)."""
    stem, parts = Path(v.path).stem, Path(v.path).parts
    if v.dataset == "ffpp":
        sub = "/".join(parts[parts.index("FaceForensics++") : -2])  # …/<kind or method>/c23
        return f"/{sub}/frames/{stem}/"
    if v.dataset in ("celebdf", "dfdc"):
        root = "Celeb-DF-v2" if v.dataset == "celebdf" else "DFDC"
        return "/" + "/".join(parts[parts.index(root) : -1]) + f"/frames/{stem}/"
    return f"/{v.dataset}/{'fake' if v.label else 'real'}/frames/{stem}/"


def expected_entries(videos: list[VideoTask]) -> set[tuple[str, str, str, str]]:
    """(json dataset, label, split, video name) per rearrange.py (written from its rules, not ours)."""
    ff_label = {
        "Deepfakes": "FF-DF",
        "Face2Face": "FF-F2F",
        "FaceSwap": "FF-FS",
        "NeuralTextures": "FF-NT",
        "FaceShifter": "FF-FH",
        "DeepFakeDetection": "DFD_fake",
    }
    methods = {v.method for v in videos if v.dataset == "ffpp" and v.label}
    per_method = {ff_label[m] for m in methods} & {"FF-DF", "FF-F2F", "FF-FS", "FF-NT"}
    entries = set()
    for v in videos:
        stem = Path(v.path).stem
        if v.dataset == "ffpp" and "/actors/" in v.path:
            entries |= {("DeepFakeDetection", "DFD_real", s, stem) for s in ("train", "val", "test")}
        elif v.dataset == "ffpp" and v.label == 0:
            names = {"FaceForensics++", *per_method} | (
                {"FaceShifter"} if "FaceShifter" in methods else set()
            )
            entries |= {(n, "FF-real", v.split, stem) for n in names}
        elif v.dataset == "ffpp":
            label = ff_label[v.method]
            if label == "DFD_fake":
                entries |= {("DeepFakeDetection", label, s, stem) for s in ("train", "val", "test")}
            elif label == "FF-FH":
                entries.add(("FaceShifter", label, v.split, stem))
            else:
                entries |= {("FaceForensics++", label, v.split, stem), (label, label, v.split, stem)}
        elif v.dataset == "celebdf":
            label = "CelebDFv2_fake" if v.label else "CelebDFv2_real"
            splits = ("train", "test", "val") if v.split == "test" else ("train",)
            entries |= {("Celeb-DF-v2", label, s, stem) for s in splits}
        elif v.dataset == "dfdc":
            label = "DFDC_Fake" if v.label else "DFDC_Real"
            splits = ("test",) if "/test/" in v.path else ("train", "val")
            entries |= {("DFDC", label, s, stem) for s in splits}
        else:
            entries.add((v.dataset, f"{v.dataset}_{'Fake' if v.label else 'Real'}", v.split, stem))
    return entries


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deepfakebench_rules_open_every_exported_frame_and_landmark(
    tmp_path: Path, face_pngs: dict[str, Any], seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)
    videos = random_videos(rng)
    uri, chosen = committed_store(tmp_path / "store", videos, face_pngs, rng)
    # where DeepfakeBench runs from: the export itself, a folder above it, or a sibling folder
    out = tmp_path / "exp" / "dfb"
    run_from = [out, tmp_path, tmp_path / "DeepfakeBench"][seed % 3]
    run_from.mkdir(parents=True, exist_ok=True)
    result = CliRunner().invoke(
        app, ["export", uri, "--out", str(out), "--run-from", str(run_from), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["run_from"] == str(run_from.resolve())
    assert str(run_from.resolve()) in (out / "README_DEEPFAKEBENCH.md").read_text()
    assert "lmdb: false" in (out / "train_config.override.yaml").read_text()
    readme = (out / "README_DEEPFAKEBENCH.md").read_text()
    # its own rearrange.py's Celeb-DF train and DFDC val are not reproduced: the README says so
    assert ("rearrange.py:310" in readme) == ("Celeb-DF-v2" in summary["datasets"])
    assert ("rearrange.py:391" in readme) == ("DFDC" in summary["datasets"])
    assert summary["label_dict_to_add"] == {"mine_Fake": 1, "mine_Real": 0}
    assert summary["differs_from_deepfakebench"] == []  # the store records no settings
    DFB_LABEL_DICT.update(summary["label_dict_to_add"])  # what the README tells the user to add
    try:
        monkeypatch.chdir(run_from)  # DeepfakeBench's paths are relative to its working directory
        json_folder = summary["dataset_json_folder"]
        seen: set[tuple[str, str, str, str]] = set()
        opened = 0
        for name in summary["datasets"]:
            for mode in ("train", "val", "test"):
                for unique, label, path in dfb_collect(json_folder, name, mode, frame_num=10**6):
                    resolved = dfb_resolve(path)
                    assert resolved == path and path.startswith("./")  # opened as given
                    image = cv2.imread(resolved)
                    assert image is not None, resolved
                    mask_path, landmark_path = dfb_side_paths(resolved)
                    assert not os.path.exists(mask_path)  # no masks: its loader gives zeros
                    landmarks = np.load(landmark_path)
                    # the frame is the stored crop, kept only if DeepfakeBench keeps it, with its landmarks
                    video = next(v for v in videos if dfb_folder(v) in path)
                    assert unique == f"{dfb_label(video)}_{Path(video.path).stem}" and label == video.label
                    k = chosen[(video.video_id, int(Path(path).stem))]
                    assert (
                        k >= 0
                        and image.tobytes()
                        == cv2.imdecode(np.frombuffer(face_pngs["faces"][k], np.uint8), 1).tobytes()
                    )
                    np.testing.assert_array_equal(landmarks, face_pngs["landmarks"][k])
                    assert landmarks.shape == (68, 2)
                    assert Path(path).name == f"{int(Path(path).stem):03d}.png"
                    seen.add((name, dfb_label(video), mode, Path(video.path).stem))
                    opened += 1
        kept = {vid for (vid, _), k in chosen.items() if k >= 0}
        assert seen == expected_entries([v for v in videos if v.video_id in kept])
        assert opened >= summary["frames"] > 0
        assert summary["frames_dropped_no_face_in_crop"] == sum(k < 0 for k in chosen.values())
        assert summary["frames"] == sum(k >= 0 for k in chosen.values())
    finally:
        for key in summary["label_dict_to_add"]:
            DFB_LABEL_DICT.pop(key)


def test_ffpp_layout_nesting_and_video_level_clips(
    tmp_path: Path, face_pngs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    videos = [
        VideoTask(
            "000",
            "/d/FaceForensics++/original_sequences/youtube/c40/videos/000.mp4",
            0,
            None,
            "train",
            dataset="ffpp",
        ),
        VideoTask(
            "Deepfakes/000_003",
            "/d/FaceForensics++/manipulated_sequences/Deepfakes/c40/videos/000_003.mp4",
            1,
            "Deepfakes",
            "train",
            dataset="ffpp",
        ),
    ]
    out = Output.open(str(tmp_path / "store"), config={"crop": {"save": True}}, weights={})
    (plan,) = plan_shards(videos, 2)
    out.set_plan([plan])
    tables = fake_shard_tables(plan, faces_per_video=20, emb_dim=None, with_crop=True)
    faces = tables["faces"]
    index = faces.schema.get_field_index("crop")
    crops = [face_pngs["faces"][i % 3] for i in range(faces.num_rows)]
    tables["faces"] = faces.set_column(index, faces.schema.field(index), pa.array(crops, pa.binary()))
    out.commit_shard(plan, tables, {})
    result = CliRunner().invoke(
        app, ["export", str(tmp_path / "store"), "--out", str(tmp_path / "dfb"), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert sorted(summary["datasets"]) == ["FF-DF", "FaceForensics++"]
    assert summary["label_dict_to_add"] == {}
    root = tmp_path / "dfb"
    assert (root / "FaceForensics++/manipulated_sequences/Deepfakes/c40/frames/000_003/475.png").is_file()
    assert (root / "FaceForensics++/manipulated_sequences/Deepfakes/c40/landmarks/000_003/000.npy").is_file()
    assert not list(root.rglob("*%2F*"))
    ff = json.loads((root / "dataset_json/FF-DF.json").read_text())
    assert set(ff) == {"FF-DF"} and set(ff["FF-DF"]) == {"FF-real", "FF-DF"}
    assert {s: set(v) for s, v in ff["FF-DF"]["FF-DF"].items()} == {
        "train": {"c40"},
        "val": {"c40"},
        "test": {"c40"},
    }
    entry = ff["FF-DF"]["FF-DF"]["train"]["c40"]["000_003"]
    assert entry["label"] == "FF-DF" and entry["masks"] == [] and len(entry["frames"]) == 20
    monkeypatch.chdir(root)
    clips = dfb_collect(summary["dataset_json_folder"], "FaceForensics++", "train", "c40", 32, True, 8)
    # 20 faces: 2 clips of 8 starting at 0 and (20 - 8) // 1 = 12, no face repeated
    fake = [c for name, label, c in clips if label == 1]
    assert [[int(Path(p).stem) for p in c] for c in fake] == [
        [k * 25 for k in range(8)],
        [k * 25 for k in range(12, 20)],
    ]


def test_paths_deepfakebench_would_rewrite_are_refused(tmp_path: Path, face_pngs: dict[str, Any]) -> None:
    videos = [VideoTask("g0", "/d/x/g0.mp4", 0, None, "train", dataset="mine")]
    out = Output.open(str(tmp_path / "store"), config={"crop": {"save": True}}, weights={})
    (plan,) = plan_shards(videos, 1)
    out.set_plan([plan])
    tables = fake_shard_tables(plan, faces_per_video=1, emb_dim=None, with_crop=True)
    faces = tables["faces"]
    index = faces.schema.get_field_index("crop")
    tables["faces"] = faces.set_column(
        index, faces.schema.field(index), pa.array(face_pngs["faces"][:1], pa.binary())
    )
    out.commit_shard(plan, tables, {})
    # `frames` in the export's own path: its loader would look for landmarks under `landmarks…/landmarks`
    refused = [
        "export",
        str(tmp_path / "store"),
        "--out",
        str(tmp_path / "myframes"),
        "--run-from",
        str(tmp_path),
    ]
    result = CliRunner().invoke(app, refused)
    assert result.exit_code == 3 and "'frames'" in result.output
    assert (
        CliRunner().invoke(app, refused[:4]).exit_code == 0
    )  # run from the export itself: ./<folder>/frames/…


def test_export_without_crops_names_the_setting(tmp_path: Path) -> None:
    out = Output.open(str(tmp_path / "out"), config={}, weights={})
    plans = plan_shards([VideoTask("v", "/d/v.mp4", 0)], 1)
    out.set_plan(plans)
    out.commit_shard(plans[0], fake_shard_tables(plans[0]), {})
    result = CliRunner().invoke(app, ["export", str(tmp_path / "out"), "--out", str(tmp_path / "dfb")])
    assert result.exit_code == 3 and "--set crop.save=true" in result.output


# ---- alignment ----------------------------------------------------------------------------------


def test_align_is_deepfakebench_preprocess_on_the_same_face() -> None:
    detector, predictor = dlib_models()
    rgb = skimage.data.astronaut()
    rect = max(detector(rgb, 1), key=lambda r: r.width() * r.height())
    theirs, _ = dfb_align(rgb, rect, detector, predictor)
    box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32)
    (face,) = Cropper(CropConfig(method="align:256"))(
        Frame(0, rgb), Detections(box[None], np.ones(1, np.float32))
    )
    ours = cv2.cvtColor(face.crop, cv2.COLOR_RGB2BGR)
    np.testing.assert_array_equal(ours, theirs)  # same points, same transform, same warp: same pixels
    (arcface,) = Cropper(CropConfig(method="arcface:256"))(
        Frame(0, rgb), Detections(box[None], np.ones(1, np.float32))
    )
    assert (
        np.abs(arcface.crop.astype(int) - face.crop.astype(int)).mean() > 5
    )  # eye centres frame it otherwise
    # a box on no face: the aligned crop has no face, DeepfakeBench drops it (preprocess.py:198-200)
    background = np.array([330, 20, 480, 170], np.float32)
    dropped = Cropper(CropConfig(method="align:256"))(
        Frame(0, rgb), Detections(background[None], np.ones(1, np.float32))
    )
    assert dropped == []


def test_unused_face_rows_are_not_exported(tmp_path: Path, face_pngs: dict[str, Any]) -> None:
    """Only the largest face of a frame (face 0) is exported, as preprocess.py:188 keeps one."""
    videos = [VideoTask("g0", "/d/x/g0.mp4", 1, None, "test", dataset="mine")]
    out = Output.open(
        str(tmp_path / "store"), config={"crop": {"save": True}, "detect": {"keep": "all"}}, weights={}
    )
    (plan,) = plan_shards(videos, 1)
    out.set_plan([plan])
    tables = fake_shard_tables(plan, faces_per_video=2, emb_dim=None, with_crop=True)
    faces = tables["faces"]
    field = faces.schema.get_field_index("face")
    faces = faces.set_column(
        field, faces.schema.field(field), pa.array([0, 1], faces.schema.field(field).type)
    )
    index = faces.schema.get_field_index("crop")
    tables["faces"] = faces.set_column(
        index, faces.schema.field(index), pa.array(face_pngs["faces"][:2], pa.binary())
    )
    out.commit_shard(plan, tables, {})
    result = CliRunner().invoke(
        app, ["export", str(tmp_path / "store"), "--out", str(tmp_path / "dfb"), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["frames"] == 1
    # with every face kept, a dropped largest face would promote the next one: the export says so
    assert summary["differs_from_deepfakebench"] == ["detect.keep=all (DeepfakeBench: largest)"]
    assert "detect.keep=all" in Path(summary["readme"]).read_text()
    assert pc.sum(pc.equal(tables["faces"]["face"], 0)).as_py() == 1


# ---- masks: FF++ mask videos through the whole per-video path and the export ------------------------


def dfb_extract(bgr: np.ndarray, mask: np.ndarray | None, detector: Any, predictor: Any) -> tuple:
    """extract_aligned_face_dlib (preprocess.py:120-204) with its mask: (crop, landmarks, mask) or Nones."""
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    faces = detector(rgb, 1)
    if not len(faces):
        return None, None, None
    face = max(faces, key=lambda rect: rect.width() * rect.height())
    shape = predictor(rgb, face)
    src = np.array([[shape.part(i).x, shape.part(i).y] for i in (37, 44, 30, 49, 55)], np.float32)
    tform = sktransform.SimilarityTransform()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        tform.estimate(src, dfb_template())
    M = tform.params[0:2, :]
    cropped = cv2.cvtColor(cv2.resize(cv2.warpAffine(rgb, M, (256, 256)), (256, 256)), cv2.COLOR_RGB2BGR)
    if mask is not None:
        mask = cv2.resize(cv2.warpAffine(mask, M, (256, 256)), (256, 256))
    found = detector(cropped, 1)
    if len(found) == 0:
        return None, None, None
    points = predictor(cropped, found[0])
    return cropped, np.array([[p.x, p.y] for p in points.parts()]), mask


def dfb_facecrop(video: Path, mask_video: Path | None, detector: Any, predictor: Any) -> dict[int, tuple]:
    """facecrop (preprocess.py:256-341), fixed_num_frames 32: {frame: (crop, landmarks, binary mask)}."""
    cap_org = cv2.VideoCapture(str(video))
    cap_mask = cv2.VideoCapture(str(mask_video)) if mask_video is not None else None
    count = int(cap_org.get(cv2.CAP_PROP_FRAME_COUNT))
    idxs = np.linspace(0, count - 1, 32, endpoint=True, dtype=int)
    saved = {}
    for cnt in range(count):
        ret_org, frame_org = cap_org.read()
        ret_mask, frame_mask = cap_mask.read() if cap_mask is not None else (True, None)
        if not ret_org or not ret_mask:
            break
        if cnt not in idxs:
            continue
        cropped, landmarks, mask = dfb_extract(frame_org, frame_mask, detector, predictor)
        if cropped is None:
            continue
        binary = cv2.threshold(mask, 1, 255, cv2.THRESH_BINARY)[1] if mask is not None else None
        saved[cnt] = (cropped, landmarks, binary)
    return saved


def test_ffpp_masks_are_cropped_as_deepfakebench_preprocess_crops_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An FF++ tree with mask videos (one full, one shorter than its fake, one fake without) → our
    intake, our per-video build path (deepfakebench preset) and the export; read back with
    DeepfakeBench's mask path rule, each mask equals preprocess.py's own crop of the mask video, the
    frames past a short mask's end are left out as its loop leaves them, and videos without a mask
    video have no mask file (its loader then gives zeros)."""
    from faceshard.config import load_config
    from faceshard.intake import build_manifest
    from faceshard.storage.schema import rows_to_tables, table_schemas
    from faceshard.tasks.pipeline import VideoProcessor
    from tests.clips import write_video

    base = skimage.data.astronaut()[16:400, 64:448]  # 384 × 384, the face near the top middle
    shifts = [(2 * k, -3 * k) for k in range(6)]
    frames = [np.ascontiguousarray(np.roll(base, s, axis=(0, 1))) for s in shifts]
    masks = []
    for k, (dy, dx) in enumerate(shifts):
        mask = np.zeros_like(base)
        cv2.ellipse(mask, (150 + dx, 90 + dy), (55 + k, 70), 0, 0, 360, (255, 255, 255), -1)
        cv2.circle(mask, (150 + dx, 150 + dy), 12, (1, 1, 1), -1)  # at the threshold: dropped
        masks.append(mask)
    root = tmp_path / "FaceForensics++"
    layout = {
        "original_sequences/youtube/c23/videos/000.mp4": (frames, None),
        "manipulated_sequences/Deepfakes/c23/videos/000_001.mp4": (frames[::-1], masks[::-1]),
        "manipulated_sequences/Face2Face/c23/videos/000_001.mp4": (frames, masks[:3]),  # mask ends early
        "manipulated_sequences/FaceSwap/c23/videos/000_001.mp4": (frames, None),
    }
    mask_files = {}
    for relative, (clip, mask_clip) in layout.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, clip)
        if mask_clip is not None:
            mask_file = path.parents[2] / "masks" / "videos" / path.name
            mask_file.parent.mkdir(parents=True, exist_ok=True)
            mask_files[relative] = write_video(mask_file, mask_clip)
    intake = build_manifest("ffpp", root)
    assert any("Deepfakes 1/1, Face2Face 1/1, FaceSwap 0/1" in note for note in intake.notes), intake.notes
    tasks = [
        VideoTask(r["video_id"], r["path"], r["label"], r["method"], r["split"], dataset="ffpp")
        for r in intake.frame.to_dicts()
    ]
    processor = VideoProcessor(load_config("deepfakebench", overrides=["identity.enabled=false"]), "cpu")
    results = [processor(task, 0) for task in tasks]
    out = Output.open(str(tmp_path / "store"), config={"crop": {"save": True}}, weights={})
    (plan,) = plan_shards(tasks, len(tasks))
    out.set_plan([plan])
    tables = rows_to_tables(
        [r.video for r in results],
        [f for r in results for f in r.faces],
        [i for r in results for i in r.identities],
        table_schemas(with_crop=True),
    )
    out.commit_shard(plan, tables, {})

    result = CliRunner().invoke(
        app, ["export", str(tmp_path / "store"), "--out", str(tmp_path / "dfb"), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["mask_problems"] == [] and summary["videos_with_masks"] == 2
    detector, predictor = dlib_models()
    monkeypatch.chdir(tmp_path / "dfb")
    index = json.loads(Path(summary["datasets"]["FaceForensics++"]).read_text())["FaceForensics++"]
    listed = [
        (name, info)
        for by_split in index.values()
        for split in by_split.values()
        for name, info in split["c23"].items()
    ]
    opened = 0
    for relative, (_, mask_clip) in layout.items():
        method = relative.split("/")[1]
        theirs = dfb_facecrop(root / relative, mask_files.get(relative), detector, predictor)
        key = "000" if method == "youtube" else "000_001"
        entries = [
            (name, info) for name, info in listed if name == key and f"/{method}/" in info["frames"][0]
        ]
        ((_, info),) = entries
        paths = dfb_sorted(info["frames"])
        assert [int(Path(p).stem) for p in paths] == sorted(theirs)  # the frames its preprocess writes
        if method == "Face2Face":
            assert sorted(theirs) == [0, 1, 2]  # its loop stopped where the mask video ended
        for path in paths:
            mask_path, landmark_path = dfb_side_paths(dfb_resolve(path))
            crop, landmarks, binary = theirs[int(Path(path).stem)]
            np.testing.assert_array_equal(cv2.imread(path), crop)
            np.testing.assert_array_equal(np.load(landmark_path), landmarks)
            if mask_clip is None:
                assert not os.path.exists(mask_path)  # load_mask (abstract_dataset.py:342): zeros
                continue
            np.testing.assert_array_equal(cv2.imread(mask_path), binary)  # the file preprocess.py:340 writes
            assert 0 < (cv2.imread(mask_path, 0) > 0).mean() < 1  # load_mask reads it as gray (338)
            opened += 1
        if method in ("Deepfakes", "Face2Face"):
            assert sorted(info["masks"]) == sorted(p.replace("frames", "masks") for p in paths)
        elif method == "FaceSwap":
            assert info["masks"] == []  # rearrange.py:197-198: no mask folder, an empty list
    assert opened == summary["masks"] == 6 + 3
    assert summary["frames_dropped_mask_ended"] == 3
    assert "Videos with masks: 2" in Path(summary["readme"]).read_text()


# ---- 81 landmarks: DeepfakeBench's predictor file, when the user has it --------------------------


def train_81_point_predictor(path: Path, crops: list[bytes]) -> Path:
    """A tiny 81-point dlib predictor trained here on the aligned crops (68 points + 13 above the brows)."""
    import dlib

    detector, predictor68 = dlib_models()
    images, objects = [], []
    for png in crops:
        for bgr in (cv2.imdecode(np.frombuffer(png, np.uint8), 1), None):
            bgr = bgr if bgr is not None else np.ascontiguousarray(images[-1][:, ::-1])
            rect = detector(bgr, 1)[0]
            points = [(p.x, p.y) for p in predictor68(bgr, rect).parts()]
            top = min(y for _, y in points[17:27]) - 15
            left, right = points[0][0], points[16][0]
            points += [(left + (right - left) * j // 12, top - abs(6 - j) * 2) for j in range(13)]
            images.append(bgr)
            objects.append([dlib.full_object_detection(rect, [dlib.point(x, y) for x, y in points])])
    options = dlib.shape_predictor_training_options()
    options.tree_depth, options.cascade_depth, options.num_trees_per_cascade_level = 2, 2, 4
    options.oversampling_amount, options.feature_pool_size, options.num_threads = 2, 40, 1
    dlib.train_shape_predictor(images, objects, options).save(str(path))
    return path


def dfb_crop_landmarks(bgr: np.ndarray, predictor_file: Path) -> np.ndarray:
    """preprocess.py:196-202 with its 81-point file: HOG (1 upsampling) on the crop, the first face,
    `face_utils.shape_to_np` (imutils: dtype "int", one row per part)."""
    import dlib

    rect = dlib.get_frontal_face_detector()(bgr, 1)[0]
    shape = dlib.shape_predictor(str(predictor_file))(bgr, rect)
    return np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], dtype="int")


def test_81_point_landmarks_when_deepfakebench_model_is_there_else_68_said_once(
    tmp_path: Path, face_pngs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = train_81_point_predictor(tmp_path / "shape_predictor_81_face_landmarks.dat", face_pngs["faces"])
    videos = [VideoTask("g0", "/d/DFDC/test/g0.mp4", 1, None, "test", dataset="dfdc")]
    out = Output.open(str(tmp_path / "store"), config={"crop": {"save": True}}, weights={})
    (plan,) = plan_shards(videos, 1)
    out.set_plan([plan])
    tables = fake_shard_tables(plan, faces_per_video=3, emb_dim=None, with_crop=True)
    faces = tables["faces"]
    index = faces.schema.get_field_index("crop")
    tables["faces"] = faces.set_column(
        index, faces.schema.field(index), pa.array(face_pngs["faces"], pa.binary())
    )
    out.commit_shard(plan, tables, {})
    store = str(tmp_path / "store")

    def export(run_from: Path, *extra: str) -> tuple[dict[str, Any], str]:
        args = ["export", store, "--out", str(run_from / "dfb"), "--run-from", str(run_from), *extra]
        result = CliRunner().invoke(app, [*args, "--json"])
        assert result.exit_code == 0, result.output
        plain = CliRunner().invoke(app, args)
        assert plain.exit_code == 0, plain.output
        return json.loads(result.stdout), plain.output

    def landmark_files(run_from: Path, summary: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        monkeypatch.chdir(run_from)
        pairs = []
        for _, _, path in dfb_collect(summary["dataset_json_folder"], "DFDC", "test"):
            _, landmark_path = dfb_side_paths(dfb_resolve(path))
            pairs.append(
                (cv2.imread(path), np.load(landmark_path))
            )  # load_landmark (abstract_dataset.py:376)
        return pairs

    # 1. given on the command line, and 2. where DeepfakeBench's README puts it in its checkout
    checkout = tmp_path / "DeepfakeBench"
    (checkout / "preprocessing/dlib_tools").mkdir(parents=True)
    (checkout / "preprocessing/dlib_tools/shape_predictor_81_face_landmarks.dat").write_bytes(
        model.read_bytes()
    )
    for run_from, extra in ((tmp_path / "explicit", ["--landmarks-model", str(model)]), (checkout, [])):
        run_from.mkdir(exist_ok=True)
        summary, printed = export(run_from, *extra)
        assert summary["landmark_points"] == 81 and summary["landmarks_note"] is None
        assert "68 points" not in printed
        pairs = landmark_files(run_from, summary)
        assert len(pairs) == 3
        for image, landmarks in pairs:
            assert landmarks.shape == (81, 2) and landmarks.dtype == np.int64  # what shape_to_np saves
            np.testing.assert_array_equal(landmarks, dfb_crop_landmarks(image, model))
        assert "81 points" in Path(summary["readme"]).read_text()

    # 3. nowhere: 68 points, said once in the summary, once on the terminal and in the README
    bare = tmp_path / "bare"
    bare.mkdir()
    summary, printed = export(bare)
    assert summary["landmark_points"] == 68
    assert printed.count("68 points") == 1 and "shape_predictor_81_face_landmarks.dat" in printed
    assert summary["landmarks_note"] in Path(summary["readme"]).read_text()
    assert all(landmarks.shape == (68, 2) for _, landmarks in landmark_files(bare, summary))

    # a 68-point file given as the 81-point model is refused before anything is written
    from faceshard.models.landmarks import predictor_path

    wrong = CliRunner().invoke(
        app, ["export", store, "--out", str(tmp_path / "x"), "--landmarks-model", str(predictor_path())]
    )
    assert wrong.exit_code == 3 and "68-point predictor" in wrong.output
    assert not (tmp_path / "x").exists()


def test_a_mask_is_not_written_where_the_stored_crop_is_not_the_align_crop_of_the_video(
    tmp_path: Path, face_pngs: dict[str, Any]
) -> None:
    """The aligned transform is recomputed from the video; a crop it does not reproduce (another file
    or crop method) gets no mask and is reported, never a mask warped with a guessed transform."""
    from tests.clips import write_video

    frames = [np.ascontiguousarray(skimage.data.astronaut()[:384, 64:448]) for _ in range(2)]
    video = tmp_path / "FaceForensics++/manipulated_sequences/Deepfakes/c23/videos/000_001.mp4"
    mask = tmp_path / "FaceForensics++/manipulated_sequences/Deepfakes/masks/videos/000_001.mp4"
    for path, clip in ((video, frames), (mask, [np.full_like(f, 255) for f in frames])):
        path.parent.mkdir(parents=True)
        write_video(path, clip)
    task = VideoTask("Deepfakes/000_001", str(video), 1, "Deepfakes", "train", dataset="ffpp")
    out = Output.open(str(tmp_path / "store"), config={"crop": {"save": True}}, weights={})
    (plan,) = plan_shards([task], 1)
    out.set_plan([plan])
    tables = fake_shard_tables(plan, faces_per_video=1, emb_dim=None, with_crop=True)
    faces = tables["faces"]
    index = faces.schema.get_field_index("crop")  # the astronaut's crop from the full photo, not this frame
    tables["faces"] = faces.set_column(
        index, faces.schema.field(index), pa.array(face_pngs["faces"][:1], pa.binary())
    )
    out.commit_shard(plan, tables, {})
    result = CliRunner().invoke(
        app, ["export", str(tmp_path / "store"), "--out", str(tmp_path / "dfb"), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["frames"] == 1 and summary["masks"] == 0
    (problem,) = summary["mask_problems"]
    assert str(video) in problem and "1 of 1 crops" in problem
    assert not list((tmp_path / "dfb").rglob("masks/*/*.png"))
    assert "Mask not written" in Path(summary["readme"]).read_text()
