"""`faceshard export`: stored crops as image files plus a DeepfakeBench-style JSON index.

Clip-based detectors (DeepfakeBench/StA) read frames from disk through a JSON index and cut each
video's sampled frames into clips of 8; this writes both from committed rows without decoding video.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc

from faceshard.storage.reader import read_table

LABELS = {0: "real", 1: "fake"}


def export_deepfakebench(uri: str, out: Path, clip: int = 8, dataset: str = "faceshard") -> Path:
    """Write `out/frames/<video_id>/<frame>_<face>.<ext>` and `out/<dataset>.json`; return the index path."""
    videos = {row["video_id"]: row for row in read_table(uri, "videos").to_pylist()}
    faces = read_table(uri, "faces", columns=["video_id", "frame", "face", "identity", "crop"])
    if "crop" not in faces.column_names:
        raise ValueError(f"{uri}: no stored crops (build with crop.save=true)")
    faces = faces.filter(pc.equal(faces["face"], 0))  # DeepfakeBench keeps one face per frame
    faces = faces.sort_by([("video_id", "ascending"), ("frame", "ascending")])
    index: dict[str, dict] = {dataset: {}}
    per_video: dict[str, list[str]] = {}
    for row in faces.to_pylist():
        data = row["crop"]
        ext = "png" if data[:4] == b"\x89PNG" else "jpg"
        relative = Path("frames") / row["video_id"] / f"{row['frame']:06d}_{row['face']}.{ext}"
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_bytes(data)
        per_video.setdefault(row["video_id"], []).append(str(relative))
    for video_id, frames in per_video.items():
        video = videos[video_id]
        label = f"{dataset}_{LABELS[int(video['label'])]}"
        split = index[dataset].setdefault(label, {}).setdefault(video["split"], {})
        split[video_id] = {
            "label": label,
            "method": video["method"],
            "frames": frames,
            "clips": [frames[i : i + clip] for i in range(0, len(frames) - clip + 1, clip)],
        }
    path = out / f"{dataset}.json"
    path.write_text(json.dumps(index, indent=1))
    return path
