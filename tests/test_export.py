"""`faceshard export deepfakebench`: read back by an independent reader written after DeepfakeBench's
`DeepfakeAbstractBaseDataset.collect_img_and_label_for_one_dataset` (training/dataset/abstract_dataset.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from faceshard.cli import app
from faceshard.storage.commit import Output
from faceshard.storage.manifest import plan_shards
from faceshard.storage.testing import fake_shard_tables, fake_videos

DEEPFAKEBENCH_FF_FAMILY = [
    "FaceForensics++",
    "FaceShifter",
    "DeepFakeDetection",
    "FF-DF",
    "FF-F2F",
    "FF-FS",
    "FF-NT",
]


def deepfakebench_collect(
    json_folder: Path,
    dataset_name: str,
    mode: str,
    compression: str,
    label_dict: dict[str, int],
    clip_size: int = 8,
) -> list[tuple[str, int, list[list[str]]]]:
    """(unique video name, label, clips of frame paths) as DeepfakeBench's video-level loader builds them."""
    with open(os.path.join(json_folder, dataset_name + ".json")) as f:
        dataset_info = json.load(f)
    collected = []
    for label in dataset_info[dataset_name]:
        sub = dataset_info[dataset_name][label][mode]
        if dataset_name in DEEPFAKEBENCH_FF_FAMILY:
            sub = sub[compression]
        for video_name, video_info in sub.items():
            unique = video_info["label"] + "_" + video_name
            if video_info["label"] not in label_dict:
                raise ValueError(f"Label {video_info['label']} is not found in the configuration file.")
            frames = video_info["frames"]
            # DeepfakeBench sorts by the integer file name of the first frame: it must parse
            frames = sorted(frames, key=lambda x: int(frames[0].split("/")[-1].split(".")[0]))
            total = len(frames)
            if total < clip_size:
                continue
            clips = [frames[i * clip_size : (i + 1) * clip_size] for i in range(total // clip_size)]
            for clip in clips:
                for path in clip:
                    image = cv2.imread(path)
                    assert image is not None, path
            collected.append((unique, label_dict[video_info["label"]], clips))
    return collected


def committed_with_crops(root: Path) -> str:
    out = Output.open(str(root), config={"crop": {"save": True}}, weights={})
    plans = plan_shards(fake_videos(6, splits=("train", "train", "test")), 3)
    out.set_plan(plans)
    for plan in plans:
        tables = fake_shard_tables(plan, faces_per_video=9, emb_dim=None, with_crop=True)
        faces = tables["faces"]
        crops = [
            cv2.imencode(".png", np.full((16, 16, 3), i, np.uint8))[1].tobytes()
            for i in range(faces.num_rows)
        ]
        index = faces.schema.get_field_index("crop")
        tables["faces"] = faces.set_column(index, "crop", pa.array(crops, pa.binary()))
        out.commit_shard(plan, tables, {})
    return str(root)


@pytest.mark.parametrize(("dataset", "compression"), [("faceshard", "c23"), ("FaceForensics++", "c40")])
def test_deepfakebench_reads_the_export(tmp_path: Path, dataset: str, compression: str) -> None:
    uri = committed_with_crops(tmp_path / "out")
    result = CliRunner().invoke(
        app,
        [
            "export",
            uri,
            "--out",
            str(tmp_path / "dfb"),
            "--dataset",
            dataset,
            "--compression",
            compression,
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    label_dict = summary["label_dict"]
    assert label_dict == {f"{dataset}_real": 0, f"{dataset}_deepfakes": 1}
    train = deepfakebench_collect(tmp_path / "dfb", dataset, "train", compression, label_dict)
    test = deepfakebench_collect(tmp_path / "dfb", dataset, "test", compression, label_dict)
    assert sorted(name.rsplit("_", 1)[-1] for name, _, _ in train) == ["v00000", "v00001", "v00003", "v00004"]
    assert sorted(name.rsplit("_", 1)[-1] for name, _, _ in test) == ["v00002", "v00005"]
    labels = {name.rsplit("_", 1)[-1]: label for name, label, _ in train + test}
    assert labels == {f"v{i:05d}": i % 2 for i in range(6)}
    for _, _, clips in train + test:
        assert len(clips) == 1 and len(clips[0]) == 8
        frames = [int(Path(p).stem) for p in clips[0]]
        assert frames == sorted(frames) == [k * 25 for k in range(8)]
    raw = json.loads((tmp_path / "dfb" / f"{dataset}.json").read_text())
    video = next(iter(raw[dataset][f"{dataset}_real"]["train"].values()))
    if dataset == "FaceForensics++":
        video = next(iter(raw[dataset][f"{dataset}_real"]["train"][compression].values()))
    assert set(video) == {"label", "frames"} and all(os.path.isabs(p) for p in video["frames"])


def test_export_without_crops_names_the_setting(tmp_path: Path) -> None:
    out = Output.open(str(tmp_path / "out"), config={}, weights={})
    plans = plan_shards(fake_videos(2), 2)
    out.set_plan(plans)
    out.commit_shard(plans[0], fake_shard_tables(plans[0]), {})
    result = CliRunner().invoke(app, ["export", str(tmp_path / "out"), "--out", str(tmp_path / "dfb")])
    assert result.exit_code == 3 and "--set crop.save=true" in result.output
