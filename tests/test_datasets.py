"""Streaming training datasets over committed shards: splitting, determinism, bounded reading, errors."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from faceshard.errors import StorageError
from faceshard.storage.commit import Output
from faceshard.storage.datasets import MissingColumnsError, SampleOptions, ShardDataset
from faceshard.storage.manifest import plan_shards
from faceshard.storage.testing import fake_shard_tables, fake_videos

CONFIG = {"embed": {"dtype": "float16"}}
WEIGHTS = {"repvit": {"source": "hub:repvit", "fingerprint": "aaa", "random": True}}


def committed(root: Path, n_videos: int = 40, shard_size: int = 4, emb_dim: int | None = 8) -> str:
    """An output of `n_videos` fake videos (train/val alternating), every shard committed."""
    uri = str(root)
    out = Output.open(uri, config=CONFIG, weights=WEIGHTS)
    plans = plan_shards(fake_videos(n_videos, splits=("train", "val")), shard_size)
    out.set_plan(plans)
    for plan in plans:
        out.commit_shard(plan, fake_shard_tables(plan, faces_per_video=5, emb_dim=emb_dim), {})
    return uri


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return committed(tmp_path_factory.mktemp("ds") / "out")


def epoch_videos(
    uri: str, epoch: int, rank: int, world_size: int = 2, workers: int = 2, seed: int = 0
) -> list[str]:
    dataset = ShardDataset(uri, kind="mintime", seed=seed, shuffle_buffer=3, rank=rank, world_size=world_size)
    dataset.set_epoch(epoch)
    # forkserver: forked copies of this pytest process exit 1 once an earlier test ran an in-process
    # Prefect flow on Ray (test_build_e2e); a training job's process has neither.
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, multiprocessing_context="forkserver")
    return [sample["video_id"] for sample in loader]


def test_every_video_exactly_once_per_epoch_across_two_ranks_and_two_workers(uri: str) -> None:
    for epoch in (0, 1):
        per_rank = [epoch_videos(uri, epoch, rank) for rank in (0, 1)]
        seen = Counter(v for videos in per_rank for v in videos)
        assert set(seen) == {f"v{i:05d}" for i in range(40)}  # no gaps
        assert max(seen.values()) == 1  # no duplicates
        assert all(len(videos) >= 8 for videos in per_rank)  # both ranks got work


def test_order_is_a_function_of_seed_and_epoch(uri: str) -> None:
    first = epoch_videos(uri, 0, rank=0)
    assert epoch_videos(uri, 0, rank=0) == first  # same seed and epoch: same order
    assert epoch_videos(uri, 1, rank=0) != first  # the next epoch: another order
    assert epoch_videos(uri, 0, rank=0, seed=1) != first
    single = ShardDataset(uri, kind="mintime", shuffle_buffer=3)
    single.set_epoch(1)
    orders = {tuple(s["video_id"] for s in single) for _ in range(2)}
    assert len(orders) == 1


def test_splits_and_sample_tensors(uri: str) -> None:
    dataset = ShardDataset(uri, split="val", kind="mintime", shuffle=False)
    samples = list(dataset)
    assert [s["video_id"] for s in samples] == [f"v{i:05d}" for i in range(1, 40, 2)]
    s = samples[0]
    assert s["features"].shape == (16, 1, 8) and s["features"].dtype == torch.float16
    assert s["mask"].sum() == 5 and s["label"].item() == 1 and s["method"] == "deepfakes"
    assert s["positions"][:5, 0].tolist() == [1, 2, 3, 4, 5]
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch["features"].shape == (4, 16, 1, 8) and len(batch["video_id"]) == 4


def test_reads_shard_by_shard_bounded_by_the_buffer(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = ShardDataset(uri, kind="mintime", shuffle_buffer=6)
    read: list[int] = []
    original = dataset._shard_samples

    def counting(shard: int):
        read.append(shard)
        return original(shard)

    monkeypatch.setattr(dataset, "_shard_samples", counting)
    iterator = iter(dataset)
    next(iterator)
    assert len(read) == 2  # 6 buffered samples + 1 → two shards of 4 videos, not all ten
    rest = list(iterator)
    assert len(rest) == 39 and len(read) == 10


def test_only_committed_shards_are_read(tmp_path: Path) -> None:
    uri = committed(tmp_path / "out", n_videos=8)
    stray = tmp_path / "out" / "faces" / "split=train" / "shard=000099"
    stray.mkdir(parents=True)
    source = next((tmp_path / "out" / "faces" / "split=train").rglob("*.parquet"))
    shutil.copy(source, stray / "part-x.parquet")  # a file no commit marker names
    ids = [s["video_id"] for s in ShardDataset(uri, kind="mintime", shuffle=False)]
    assert sorted(ids) == [f"v{i:05d}" for i in range(8)]


def test_missing_columns_name_the_build_setting(tmp_path: Path) -> None:
    uri = committed(tmp_path / "bare", n_videos=4, emb_dim=None)
    with pytest.raises(MissingColumnsError, match=r"tokens.*--set embed.output=tokens"):
        ShardDataset(uri, kind="mintime")
    with_rgb = committed(tmp_path / "rgb", n_videos=4)
    with pytest.raises(MissingColumnsError, match=r"emb_depth.*--set depth.enabled=true"):
        ShardDataset(with_rgb, kind="megatron")
    with pytest.raises(MissingColumnsError) as bare_megatron:
        ShardDataset(uri, kind="megatron")
    hint = str(bare_megatron.value)  # each setting once, and the --rebuild a changed config needs
    for setting in ("embed.enabled=true", "embed.output=pooled", "depth.enabled=true", "embed.depth=true"):
        assert hint.count(f"--set {setting}") == 1, hint
    assert hint.endswith("--rebuild (or into a new --out)"), hint


# the repeating variant (DeepfakeBench's own rule, tests/test_export_deepfakebench.py, skips 5-face videos)
REPEAT = SampleOptions(clip_rule="repeat")


def test_clips_of_embeddings(uri: str) -> None:
    dataset = ShardDataset(uri, split="train", kind="clips", shuffle=False, options=REPEAT)
    sample = next(iter(dataset))
    assert sample["clips"].shape == (4, 8, 8)
    # five faces at frames 0,25,…,100 spread over 32 picks: every face used, in temporal order
    firsts = sample["clips"][:, :, 0].reshape(-1).float().numpy()
    assert len(np.unique(firsts)) == 5


def committed_crops(root: Path, sides: list[int]) -> str:
    """One video whose five faces store real PNG crops, face k square of side sides[k % len(sides)]."""
    uri = str(root)
    out = Output.open(uri, config=CONFIG, weights=WEIGHTS)
    plans = plan_shards(fake_videos(1, splits=("train",)), 1)
    out.set_plan(plans)
    tables = fake_shard_tables(plans[0], faces_per_video=5, with_crop=True)
    faces = tables["faces"]
    crops = [
        cv2.imencode(".png", np.full((side, side, 3), 40 * k, np.uint8))[1].tobytes()
        for k, side in enumerate(sides[k % len(sides)] for k in range(faces.num_rows))
    ]
    index = faces.schema.get_field_index("crop")
    tables["faces"] = faces.set_column(
        index, faces.schema.field(index), pa.array(crops, faces.schema.field(index).type)
    )
    out.commit_shard(plans[0], tables, {})
    return uri


def test_clips_of_crops_of_different_sizes_are_resized_as_deepfakebench_does(tmp_path: Path) -> None:
    uri = committed_crops(tmp_path / "out", sides=[64, 96, 80])
    sample = next(iter(ShardDataset(uri, kind="clips", shuffle=False, options=REPEAT)))
    assert sample["clips"].shape == (4, 8, 256, 256, 3) and sample["clips"].dtype == torch.uint8
    assert sorted(np.unique(sample["clips"][..., 0].numpy()).tolist()) == [0, 40, 80, 120, 160]
    small = ShardDataset(
        uri, kind="clips", shuffle=False, options=SampleOptions(clip_size=32, clip_rule="repeat")
    )
    assert next(iter(small))["clips"].shape == (4, 8, 32, 32, 3)
    native = ShardDataset(
        uri, kind="clips", shuffle=False, options=SampleOptions(clip_size=None, clip_rule="repeat")
    )
    with pytest.raises(StorageError, match=r"3 sizes.*clip_size=S.*crop.store=pad:S"):
        next(iter(native))
    same = committed_crops(tmp_path / "same", sides=[48])
    kept = ShardDataset(
        same, kind="clips", shuffle=False, options=SampleOptions(clip_size=None, clip_rule="repeat")
    )
    assert next(iter(kept))["clips"].shape == (4, 8, 48, 48, 3)  # one size: kept native
