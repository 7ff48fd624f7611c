"""`faceshard export`: stored crops as DeepfakeBench's own preprocessing + rearrange would leave them.

Layout (DeepfakeBench `preprocessing/preprocess.py`, `preprocessing/rearrange.py`), under `--out`:
`<folder>/frames/<video stem>/<frame:03d>.png`, `<folder>/landmarks/<video stem>/<frame:03d>.npy`
(68 points of the aligned crop, int64) and `dataset_json/<Dataset>.json`, shaped
`{dataset: {label: {split: {[compression:] {video: {"label", "frames"[, "masks"]}}}}}}`, where
`<folder>` is e.g. `FaceForensics++/manipulated_sequences/Deepfakes/c23`, `Celeb-DF-v2/Celeb-real`,
`DFDC/train/dfdc_train_part_0`. Dataset names, label names, splits and FF++ compression nesting are
DeepfakeBench's (see `place`). Frame paths are relative and start with `./` (its loader opens such a
path as given, from the working directory, and prefixes any other with `./{rgb_dir}\\`): they are
written relative to `run_from`, the directory DeepfakeBench must run from (its `training/train.py`
reads `./training/config/…`, so that is its checkout). A README in the export says so.

A frame is exported only when dlib HOG (one upsampling) finds a face in its aligned crop, whose 68
points are the landmarks: DeepfakeBench's own rule, applied to the stored crop itself (PNG is
lossless, so these are the pixels it would have checked). FF++ fakes whose method ships mask
videos (`<Method>/masks/videos/<stem>.mp4`) get `<folder>/masks/<stem>/<frame:03d>.png`: the mask
frame warped with the frame's aligned transform and thresholded, as preprocess.py does. The
transform is recomputed here from the source video and the stored box (the export re-decodes both
videos at the exported frames only) and used only where it reproduces the stored crop exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import cv2
import numpy as np
import pyarrow.compute as pc

from faceshard.storage.reader import read_table

ALL_SPLITS = ("train", "val", "test")
# rearrange.py:85-95: FF++ method folder → DeepfakeBench label (and the dataset JSON it lands in).
FF_LABELS = {
    "Deepfakes": "FF-DF",
    "Face2Face": "FF-F2F",
    "FaceSwap": "FF-FS",
    "NeuralTextures": "FF-NT",
    "FaceShifter": "FF-FH",
    "DeepFakeDetection": "DFD_fake",
}
# abstract_dataset.py:193: the dataset names whose JSON nests a compression level under each split.
FF_FAMILY = ("FaceForensics++", "FaceShifter", "DeepFakeDetection", "FF-DF", "FF-F2F", "FF-FS", "FF-NT")
# The label names of DeepfakeBench's shipped training/config/train_config.yaml `label_dict`.
SHIPPED_LABELS = {
    "DFD_fake": 1, "DFD_real": 0, "FF-SH": 1, "FF-F2F": 1, "FF-DF": 1, "FF-FS": 1, "FF-NT": 1, "FF-FH": 1,
    "FF-real": 0, "CelebDFv1_real": 0, "CelebDFv1_fake": 1, "CelebDFv2_real": 0, "CelebDFv2_fake": 1,
    "DFDCP_Real": 0, "DFDCP_FakeA": 1, "DFDCP_FakeB": 1, "DFDC_Fake": 1, "DFDC_Real": 0, "DF_fake": 1,
    "DF_real": 0, "UADFV_Fake": 1, "UADFV_Real": 0, "roop_Real": 0, "roop_Fake": 1,
}  # fmt: skip
COMPRESSIONS = ("raw", "c23", "c40")
# Where DeepfakeBench's own rearrange.py gives something other than its evident intent (seen by running
# it on the same videos); the export follows the intent and its README says so.
REARRANGE_QUIRKS = {
    "Celeb-DF-v2": "its rearrange.py:310 resets the real label for each real folder, so its train split lists "
    "only the real videos of whichever of Celeb-real/ and YouTube-real/ os.scandir yields last (a "
    "filesystem order); this export lists both, and its test/val lists are the official test list as in "
    "its rearrange.py:321-335",
    "DFDC": "its rearrange.py:391 writes one test video's entry (`label`, `frames` keys) into the val "
    "split of each label, so its loader would stop on those keys in val mode; this export's val holds the "
    "train-part videos only (rearrange.py:412-413)",
}
BOX = ("x1", "y1", "x2", "y2")


@dataclass(frozen=True)
class Place:
    """Where one video goes in DeepfakeBench's layout."""

    datasets: tuple[str, ...]  # the dataset JSONs that list it
    label: str
    folder: str  # preprocess.py's save_path, relative to the export root
    splits: tuple[str, ...]
    compression: str | None  # the nesting level for FF_FAMILY datasets
    masks: bool = False  # rearrange.py:194-203 gives FF++ fakes (not FaceShifter) a `masks` list


def _parts(path: str) -> list[str]:
    return list(PurePath(path).parts)


def _after(parts: list[str], name: str) -> str | None:
    return parts[parts.index(name) + 1] if name in parts and parts.index(name) + 1 < len(parts) else None


def place(video: dict[str, Any], generic_name: str | None = None, compression: str | None = None) -> Place:
    """DeepfakeBench's dataset, label, folder and splits for a `videos` row (rearrange.py per dataset)."""
    parts, split, label = _parts(video["path"]), video["split"] or "train", int(video["label"])
    dataset = video.get("dataset")
    if dataset == "ffpp":
        level = compression or next((p for p in reversed(parts) if p in COMPRESSIONS), "c23")
        if label == 0:
            kind = _after(parts, "original_sequences") or "youtube"
            folder = f"FaceForensics++/original_sequences/{kind}/{level}"
            if kind == "actors":  # rearrange.py:168-170: DFD reals are listed in every split
                return Place(("DeepFakeDetection",), "DFD_real", folder, ALL_SPLITS, level)
            return Place(
                ("FaceForensics++", "FF-DF", "FF-F2F", "FF-FS", "FF-NT", "FaceShifter"), "FF-real", folder,
                (split,), level,
            )  # fmt: skip
        method = video["method"] or _after(parts, "manipulated_sequences") or ""
        if method not in FF_LABELS:
            raise ValueError(f"{video['path']}: FF++ method {method!r} has no DeepfakeBench label")
        name, folder = FF_LABELS[method], f"FaceForensics++/manipulated_sequences/{method}/{level}"
        if name == "DFD_fake":  # rearrange.py:205-208: no pair split, so every split
            return Place(("DeepFakeDetection",), name, folder, ALL_SPLITS, level, masks=True)
        if name == "FF-FH":
            return Place(("FaceShifter",), name, folder, (split,), level)
        return Place(("FaceForensics++", name), name, folder, (split,), level, masks=True)
    if dataset == "celebdf":
        # rearrange.py:314-318 lists every video under train; 332-335 the test list under test and val.
        folder = f"Celeb-DF-v2/{parts[-2]}"
        splits = ("train", "test", "val") if split == "test" else ("train",)
        return Place(("Celeb-DF-v2",), "CelebDFv2_fake" if label else "CelebDFv2_real", folder, splits, None)
    if dataset == "dfdc":
        name = "DFDC_Fake" if label else "DFDC_Real"
        if split == "test" or parts[-2] == "test":  # rearrange.py:378-390
            return Place(("DFDC",), name, "DFDC/test", ("test",), None)
        return Place(("DFDC",), name, f"DFDC/train/{parts[-2]}", ("train", "val"), None)  # 393-413
    name = generic_name or dataset or "faceshard"
    kind = "fake" if label else "real"  # UADFV's layout and label style (rearrange.py:468-490)
    return Place((name,), f"{name}_{kind.capitalize()}", f"{name}/{kind}", (split,), None)


def frame_reference(file: Path, run_from: Path) -> str:
    """The path DeepfakeBench opens as given: `./` + `file` relative to `run_from`.

    Its loader (abstract_dataset.py:298-299) prefixes `./{rgb_dir}\\` to a path not starting with `.`
    and derives `landmarks`/`masks` paths by replacing every `frames` and `.png` (485-486), so both
    must occur once; a backslash would switch its sort key to Windows separators (209-212).
    """
    ref = "./" + os.path.relpath(file, run_from)
    if ref.count("frames") != 1 or ref.count(".png") != 1 or "\\" in ref:
        raise ValueError(
            f"{ref}: DeepfakeBench derives landmark/mask paths by replacing every 'frames' and '.png' "
            "in it; choose --out/--run-from whose relative path holds neither (and no backslash)"
        )
    return ref


# What DeepfakeBench's preprocess.py does (SPEC §1-§3): the build settings under which this export equals it.
DEEPFAKEBENCH_BUILD = {
    ("sampling", "strategy"): "uniform:32",
    ("detect", "backend"): "dlib",
    ("detect", "upsample"): 1,
    ("detect", "keep"): "largest",
    ("crop", "method"): "align:256",
    ("crop", "store"): "native",
}


def _metadata(uri: str) -> dict[str, Any]:
    from faceshard.storage import fsio
    from faceshard.storage.commit import read_metadata

    fs, root = fsio.open_fs(uri)
    return read_metadata(fs, root) or {}


def aligned_on(uri: str) -> Path | None:
    """The predictor file the build at `uri` aligned its crops on (`crop.landmarks_model`, recorded as
    the weights role `landmarks`), or None: dlib's 68-point model."""
    recorded = (_metadata(uri).get("weights") or {}).get("landmarks")
    return Path(recorded["source"]) if recorded else None


def build_differences(uri: str) -> list[str]:
    """Settings of the build at `uri` that differ from DeepfakeBench's preprocessing (empty: none)."""
    metadata = _metadata(uri)
    config = metadata.get("config") or {}
    found = []
    for (section, key), wanted in DEEPFAKEBENCH_BUILD.items():
        value = (config.get(section) or {}).get(key)
        if value is not None and value != wanted:
            found.append(f"{section}.{key}={value} (DeepfakeBench: {wanted})")
    method = (config.get("crop") or {}).get("method") or ""
    if method.startswith("align:") and "landmarks" not in (metadata.get("weights") or {}):
        found.append(ALIGNED_ON_68_SETTING)
    return found


def export_deepfakebench(
    uri: str,
    out: Path,
    run_from: Path | None = None,
    dataset: str | None = None,
    compression: str | None = None,
    landmarks_model: Path | None = None,
) -> dict[str, Any]:
    """Write DeepfakeBench's frames/landmarks/JSON layout under `out`; return a summary.

    `run_from`: the directory DeepfakeBench will run from (default `out`); `dataset` names datasets
    DeepfakeBench has no layout for; `compression` overrides the FF++ level read from the video path;
    `landmarks_model`: DeepfakeBench's 81-point dlib model (else looked for, see `find_predictor_81`).
    """
    from faceshard.models.landmarks import crop_landmarks

    out = Path(out).resolve()
    run_from = Path(run_from).resolve() if run_from is not None else out
    build_predictor = aligned_on(uri)
    if landmarks_model is None and build_predictor is not None and build_predictor.is_file():
        landmarks_model = build_predictor  # the 81-point file the build aligned on saves the landmarks too
    predictor, landmarks_note = _landmark_model(landmarks_model, run_from)
    videos = {row["video_id"]: row for row in read_table(uri, "videos").to_pylist()}
    try:
        faces = read_table(uri, "faces", columns=["video_id", "frame", "face", *BOX, "crop"])
    except KeyError:
        raise ValueError(f"{uri}: no stored crops; rebuild with --set crop.save=true") from None
    faces = faces.filter(pc.equal(faces["face"], 0))  # preprocess.py:188: the largest face only
    faces = faces.sort_by([("video_id", "ascending"), ("frame", "ascending")])
    places = {vid: place(video, dataset, compression) for vid, video in videos.items()}
    by_video: dict[str, list[dict[str, Any]]] = {}
    for row in faces.to_pylist():
        if row["crop"] is not None:
            by_video.setdefault(row["video_id"], []).append(row)
    per_video: dict[str, list[str]] = {}
    mask_refs: dict[str, list[str]] = {}
    masks = _Masks(build_predictor)
    dropped = 0
    for video_id, rows in by_video.items():
        kept = []
        for row in rows:
            data = row["crop"]
            if data[:4] != b"\x89PNG":
                raise ValueError(
                    f"{uri}: crops are not PNG; DeepfakeBench finds landmarks by replacing '.png' "
                    "(abstract_dataset.py:486) and checks faces on lossless crops: rebuild with --set crop.format=png"
                )
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # the crop as it saves it
            landmarks = crop_landmarks(bgr, predictor)
            if landmarks is None:  # preprocess.py:198-200: no face in the aligned crop, frame dropped
                dropped += 1
                continue
            kept.append((row, bgr, landmarks))
        where = places[video_id]
        video_masks = masks.crop(videos[video_id]["path"], kept) if where.masks else None
        if video_masks is not None:
            kept = [k for k in kept if k[0]["frame"] in video_masks]
        stem = PurePath(videos[video_id]["path"]).stem
        for row, _, landmarks in kept:
            name = f"{row['frame']:03d}"  # preprocess.py:326
            frame_file = out / where.folder / "frames" / stem / f"{name}.png"
            reference = frame_reference(frame_file, run_from)
            _write(frame_file, row["crop"])
            _write(out / where.folder / "landmarks" / stem / f"{name}.npy", landmarks)
            per_video.setdefault(video_id, []).append(reference)
            if video_masks is not None and video_masks[row["frame"]] is not None:
                # preprocess.py:337-340: masks/<stem>/<frame>.png beside frames/ (the loader's replace)
                _write(out / where.folder / "masks" / stem / f"{name}.png", video_masks[row["frame"]])
                mask_refs.setdefault(video_id, []).append(reference.replace("frames", "masks"))
    index, seen = _index(videos, places, per_video, mask_refs)
    json_folder = out / "dataset_json"
    json_folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, content in sorted(index.items()):
        path = json_folder / f"{name}.json"
        path.write_text(json.dumps({name: content}, indent=1))
        written[name] = str(path)
    label_dict = {label: value for label, value in sorted(seen.items())}
    summary = {
        "run_from": str(run_from),
        "dataset_json_folder": str(json_folder),
        "datasets": written,
        "videos": len(per_video),
        "videos_without_frames": len(videos) - len(per_video),
        "frames": sum(len(f) for f in per_video.values()),
        "frames_dropped_no_face_in_crop": dropped,
        "videos_with_masks": len(mask_refs),
        "masks": sum(len(m) for m in mask_refs.values()),
        # preprocess.py:297-300: its loop stops at the first frame its mask video does not have
        "frames_dropped_mask_ended": masks.ended,
        "mask_problems": masks.problems,
        "label_dict": label_dict,
        "label_dict_to_add": {k: v for k, v in label_dict.items() if SHIPPED_LABELS.get(k) != v},
        "landmark_points": 81 if predictor else 68,
        "landmark_model": str(predictor) if predictor else "dlib shape_predictor_68_face_landmarks.dat",
        "landmarks_note": landmarks_note,
        "aligned_on": str(build_predictor) if build_predictor else None,
        # e.g. keep=all: a frame whose largest face was dropped exports the next one, where DeepfakeBench drops it
        "differs_from_deepfakebench": build_differences(uri),
    }
    readme = out / "README_DEEPFAKEBENCH.md"
    readme.write_text(_readme(summary))
    (out / "train_config.override.yaml").write_text(_config_snippet(summary))
    summary["readme"] = str(readme)
    return summary


def _landmark_model(explicit: Path | None, run_from: Path) -> tuple[Path | None, str | None]:
    """DeepfakeBench's 81-point model if found (else None and the sentence saying 68 are written)."""
    from faceshard.models.landmarks import (
        PREDICTOR_81_FILE,
        cache_path_81,
        find_predictor_81,
        predictor_points,
    )

    found = find_predictor_81(explicit, run_from)
    if found is None:
        return None, (
            f"landmarks have dlib's 68 points, not DeepfakeBench's 81: {PREDICTOR_81_FILE} was not found "
            f"(looked in {run_from}/preprocessing/dlib_tools and {cache_path_81().parent}; give it with "
            "--landmarks-model); points 68-80 (forehead) are absent and its loader's (81, 2) zeros "
            "for a missing file will not match this shape"
        )
    if (points := predictor_points(found)) != 81:
        raise ValueError(f"{found}: a {points}-point predictor, not DeepfakeBench's 81-point one")
    return found, None


def _write(path: Path, data: bytes | np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, np.ndarray):
        np.save(path, data)
    else:
        path.write_bytes(data)


def _decode(path: str, frames: set[int]) -> dict[int, np.ndarray]:
    """The RGB frames of `path` at `frames`, decoded as the build decoded them (stops after the last)."""
    from faceshard.tasks.decode import iter_frames, probe

    info, last = probe(path), max(frames)
    wanted = iter_frames(path, info, frames.__contains__, lambda: info.n_frames_decoded > last)
    return {frame.index: frame.rgb for frame in wanted}


def aligned_mask(
    rgb: np.ndarray,
    box: np.ndarray,
    crop_bgr: np.ndarray,
    mask_rgb: np.ndarray,
    predictor: Path | None = None,
) -> bytes | None:
    """The PNG mask preprocess.py writes for this face, or None when the crop is not `align:S` of `rgb`.

    The aligned transform is recomputed from the frame and the stored box as the build computed it
    (the same points and estimate), and trusted only if it reproduces the stored crop exactly. Then
    the mask frame (BGR, as it reads it) takes the frame's warp, resize and a threshold at 1
    (preprocess.py:171-173, 339-340). `predictor`: the file the build aligned on (default 68 points).
    """
    from faceshard.models.landmarks import deepfakebench_points
    from faceshard.tasks.crops import deepfakebench_transform

    size = crop_bgr.shape[0]
    matrix = deepfakebench_transform(deepfakebench_points(rgb, box, predictor), size)
    warped = cv2.cvtColor(cv2.warpAffine(rgb, matrix, (size, size)), cv2.COLOR_RGB2BGR)
    if warped.shape != crop_bgr.shape or not np.array_equal(warped, crop_bgr):
        return None
    mask = cv2.warpAffine(cv2.cvtColor(mask_rgb, cv2.COLOR_RGB2BGR), matrix, (size, size))
    mask = cv2.resize(mask, (size, size))
    _, binary = cv2.threshold(mask, 1, 255, cv2.THRESH_BINARY)
    return cv2.imencode(".png", binary)[1].tobytes()


class _Masks:
    """FF++ mask videos cropped frame by frame with each face's aligned transform (SPEC §8 masks)."""

    def __init__(self, predictor: Path | None = None) -> None:
        self.predictor = predictor  # the build's alignment model (None: dlib's 68 points)
        self.ended = 0
        self.problems: list[str] = []
        self._listed: dict[Path, dict[str, Path]] = {}

    def crop(
        self, video: str, kept: list[tuple[dict[str, Any], np.ndarray, np.ndarray]]
    ) -> dict[int, bytes | None] | None:
        """{frame: mask PNG (None: not reproducible)} for the frames it keeps, or None: no mask video.

        A frame at or after the mask video's end is left out: preprocess.py:297-300 stops reading
        the video there.
        """
        from faceshard.errors import VideoError
        from faceshard.intake.ffpp import mask_videos, method_folder

        folder = method_folder(video)
        if folder is None:
            return None
        mask = self._listed.setdefault(folder, mask_videos(folder)).get(PurePath(video).stem)
        if mask is None or not kept:
            return None
        frames = {row["frame"] for row, _, _ in kept}
        try:
            sources, mask_frames = _decode(video, frames), _decode(str(mask), frames)
        except (VideoError, OSError) as exc:
            self.problems.append(f"{video}: no masks written, the video or {mask} does not decode ({exc})")
            return None
        end = min((f for f in frames if f not in mask_frames), default=None)
        masks: dict[int, bytes | None] = {}
        for row, bgr, _ in kept:
            frame = row["frame"]
            if end is not None and frame >= end:
                self.ended += 1
                continue
            box = np.array([row[k] for k in BOX], np.float32)
            masks[frame] = (
                aligned_mask(sources[frame], box, bgr, mask_frames[frame], self.predictor)
                if frame in sources
                else None
            )
        if missing := sum(m is None for m in masks.values()):
            self.problems.append(
                f"{video}: {missing} of {len(masks)} crops are not the align crop of this file's frames "
                "(another file or crop method?): their masks are not written, DeepfakeBench reads zeros"
            )
        return masks


def _index(
    videos: dict[str, dict[str, Any]],
    places: dict[str, Place],
    per_video: dict[str, list[str]],
    mask_refs: dict[str, list[str]],
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """{dataset: {label: {split: {[compression:] {stem: entry}}}}} and the labels used."""
    index: dict[str, dict[str, Any]] = {}
    labels: dict[str, int] = {}
    for video_id, frames in per_video.items():
        where, video = places[video_id], videos[video_id]
        stem = PurePath(video["path"]).stem
        entry: dict[str, Any] = {"label": where.label, "frames": frames}
        if where.masks:
            entry["masks"] = mask_refs.get(video_id, [])  # rearrange.py:194-200: [] without a mask folder
        labels[where.label] = int(video["label"])
        for name in where.datasets:
            for split in where.splits:
                level = index.setdefault(name, {}).setdefault(where.label, {}).setdefault(split, {})
                if name in FF_FAMILY:
                    level = level.setdefault(where.compression or "c23", {})
                if stem in level:
                    raise ValueError(f"two videos named {stem!r} under {name}/{where.label}/{split}")
                level[stem] = entry
    for name in ("FF-DF", "FF-F2F", "FF-FS", "FF-NT", "FaceShifter"):  # a method JSON needs its fakes
        if name in index and set(index[name]) == {"FF-real"}:
            del index[name]
    # Its loader indexes [label][mode][compression] for every label: every split (and level) exists.
    for name, by_label in index.items():
        levels = (
            {lv for split in by_label.values() for s in split.values() for lv in s}
            if name in FF_FAMILY
            else set()
        )
        for splits in by_label.values():
            for split in ALL_SPLITS:
                level = splits.setdefault(split, {})
                for compression in sorted(levels):
                    level.setdefault(compression, {})
    return index, labels


def _config_snippet(summary: dict[str, Any]) -> str:
    lines = [
        "# Merge into DeepfakeBench's training/config/train_config.yaml (and test_config.yaml).",
        "# lmdb must be false: train.py:244-245 replaces dataset_json_folder when lmdb is true.",
        "lmdb: false",
        f"dataset_json_folder: '{summary['dataset_json_folder']}'",
    ]
    if summary["label_dict_to_add"]:
        lines.append("label_dict:  # add these entries to the shipped label_dict")
        lines += [f"  {label}: {value}" for label, value in summary["label_dict_to_add"].items()]
    return "\n".join(lines) + "\n"


ALIGNED_ON_68_SETTING = (
    "crop aligned on dlib's 68-point model (DeepfakeBench: shape_predictor_81_face_landmarks.dat's points "
    "37, 44, 30, 49, 55, a few pixels apart): build with --set "
    "crop.landmarks_model=/path/to/shape_predictor_81_face_landmarks.dat for DeepfakeBench's exact alignment"
)
_ALIGNED_ON_68 = (
    "These are the 81 points DeepfakeBench's own preprocessing saves. Its crops are aligned on that "
    "model's points 37, 44, 30, 49, 55; the build aligned on dlib's 68-point model's, which may sit a "
    "few pixels apart, so the crops can differ slightly from its own (build with `--set "
    "crop.landmarks_model=/path/to/shape_predictor_81_face_landmarks.dat` for its exact alignment)."
)

_ALIGNED_ON_81 = (
    "These are the 81 points DeepfakeBench's own preprocessing saves, and the build aligned its crops on "
    "that model's points 37, 44, 30, 49, 55 (crop.landmarks_model), as DeepfakeBench does."
)


def _quirks(datasets: dict[str, str]) -> str:
    found = [f"- {name}: {REARRANGE_QUIRKS[name]}.\n" for name in datasets if name in REARRANGE_QUIRKS]
    return (
        "Where DeepfakeBench's own rearrange.py differs from this export:\n" + "".join(found) + "\n"
        if found
        else ""
    )


def _problems(problems: list[str]) -> str:
    return "".join(f"\n\n**Mask not written:** {problem}" for problem in problems)


def _readme(summary: dict[str, Any]) -> str:
    datasets = ", ".join(summary["datasets"]) or "(none)"
    return f"""# DeepfakeBench export (faceshard)

Run DeepfakeBench from this directory (every frame path is relative to it):

    cd {summary["run_from"]}

Frame paths in `dataset_json/*.json` start with `./`: DeepfakeBench opens them as given from the
working directory (training/dataset/abstract_dataset.py `load_rgb`). Its `training/train.py` reads
`./training/config/…`, so that directory must be its checkout: if it is not, export again with
`faceshard export URI --out DIR --run-from <DeepfakeBench checkout>`.

In `training/config/train_config.yaml` (and `test_config.yaml`) set what `train_config.override.yaml`
holds: `lmdb: false` (with `lmdb: true`, train.py replaces `dataset_json_folder` and reads LMDB) and
`dataset_json_folder: {summary["dataset_json_folder"]}`{" and the label_dict entries listed there" if summary["label_dict_to_add"] else ""}.
Datasets (use as --train_dataset / --test_dataset): {datasets}.

Each frame is the aligned 256 px crop of the largest face (dlib points 37, 44, 30, 49, 55, scale
1.3), kept only where dlib finds a face in the crop; `landmarks/` holds that face's
{summary["landmark_points"]} points ((N, 2) int64, as preprocess.py saves them; model: {summary["landmark_model"]}).
{summary["landmarks_note"] or (_ALIGNED_ON_81 if summary["aligned_on"] else _ALIGNED_ON_68)}

`masks/` (beside `frames/`, same names, the loader's `replace('frames', 'masks')`) hold the
manipulation mask of each frame of the FF++ fakes whose mask video was found
(`manipulated_sequences/<Method>/masks/videos/<video>.mp4`; Deepfakes, Face2Face, FaceSwap,
NeuralTextures, DeepFakeDetection): the mask frame warped with the frame's aligned transform and
thresholded at 1, as preprocess.py writes it. Videos with masks: {summary["videos_with_masks"]};
masks: {summary["masks"]}; frames left out because the mask video ended before them (preprocess.py
stops there): {summary["frames_dropped_mask_ended"]}. Every other frame has no mask file, and
DeepfakeBench's loader (abstract_dataset.py `load_mask`) then gives an all-zero mask: real videos,
FaceShifter, Celeb-DF, DFDC and the rest, as with its own preprocessing.{_problems(summary["mask_problems"])}

{_quirks(summary["datasets"])}Build settings that differ from DeepfakeBench's preprocessing: {"; ".join(summary["differs_from_deepfakebench"]) or "none"}.

Videos: {summary["videos"]}; frames: {summary["frames"]}; videos without a frame: {summary["videos_without_frames"]};
stored crops dropped here for want of a face: {summary["frames_dropped_no_face_in_crop"]} (a build with
`crop.method=align:256` already left those frames out).
"""
