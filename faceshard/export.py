"""`faceshard export deepfakebench`: stored crops as image files plus DeepfakeBench's JSON index.

DeepfakeBench's dataset classes read `<dataset_json_folder>/<dataset>.json`, shaped
`{dataset: {label: {split: {video: {"label": label, "frames": [path, …]}}}}}`, where for its
FaceForensics++ family (FF_FAMILY) a compression level (`c23`, `c40`, …) sits between split and
video. Each frame path is opened as given (absolute here), and its file name must be an integer
(`000120.png`): the loader parses it. The label strings must be in the `label_dict` of its config;
the export returns the mapping to add (`<dataset>_real`: 0, `<dataset>_<method>`: 1). One face per
frame (the largest, as DeepfakeBench keeps); clip detectors cut the frames into clips of 8 themselves.
No video is decoded: everything comes from committed rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow.compute as pc

from faceshard.storage.reader import read_table

# Dataset names for which DeepfakeBench's loader descends into a compression level.
FF_FAMILY = ("FaceForensics++", "FaceShifter", "DeepFakeDetection", "FF-DF", "FF-F2F", "FF-FS", "FF-NT")


def label_name(dataset: str, label: int, method: str | None) -> str:
    """`<dataset>_real`, or `<dataset>_<method>` for a fake (`<dataset>_fake` without a method)."""
    return f"{dataset}_real" if int(label) == 0 else f"{dataset}_{method or 'fake'}"


def export_deepfakebench(
    uri: str, out: Path, dataset: str = "faceshard", compression: str = "c23"
) -> dict[str, Any]:
    """Write `out/frames/<label>/<video>/<frame>.<ext>` and `out/<dataset>.json`; return a summary.

    Videos without a stored face are left out (DeepfakeBench cannot index an empty frame list).
    """
    out = Path(out).resolve()
    videos = {row["video_id"]: row for row in read_table(uri, "videos").to_pylist()}
    try:
        faces = read_table(uri, "faces", columns=["video_id", "frame", "face", "crop"])
    except KeyError:
        raise ValueError(f"{uri}: no stored crops; rebuild with --set crop.save=true") from None
    faces = faces.filter(pc.equal(faces["face"], 0))  # the largest face of each frame
    faces = faces.sort_by([("video_id", "ascending"), ("frame", "ascending")])
    per_video: dict[str, list[str]] = {}
    for row in faces.to_pylist():
        data = row["crop"]
        if data is None:
            continue
        video = videos[row["video_id"]]
        ext = "png" if data[:4] == b"\x89PNG" else "jpg"
        name = label_name(dataset, video["label"], video["method"])
        path = out / "frames" / name / quote(row["video_id"], safe="") / f"{row['frame']:06d}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        per_video.setdefault(row["video_id"], []).append(str(path))
    index: dict[str, dict[str, Any]] = {dataset: {}}
    label_dict: dict[str, int] = {}
    for video_id, frames in per_video.items():
        video = videos[video_id]
        name = label_name(dataset, video["label"], video["method"])
        label_dict[name] = int(video["label"])
        level = index[dataset].setdefault(name, {}).setdefault(video["split"], {})
        if dataset in FF_FAMILY:
            level = level.setdefault(compression, {})
        level[video_id] = {"label": name, "frames": frames}
    # DeepfakeBench indexes `[label][mode]` for every label: each label gets every split (maybe empty).
    splits = sorted({video["split"] for video in videos.values()})
    for levels in index[dataset].values():
        for split in splits:
            level = levels.setdefault(split, {})
            if dataset in FF_FAMILY:
                level.setdefault(compression, {})
    path = out / f"{dataset}.json"
    path.write_text(json.dumps(index, indent=1))
    return {
        "index": str(path),
        "videos": len(per_video),
        "videos_without_faces": len(videos) - len(per_video),
        "frames": sum(len(f) for f in per_video.values()),
        "label_dict": dict(sorted(label_dict.items())),
    }
