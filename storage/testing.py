"""Synthetic shard rows for tests and benchmarks of the storage layer (no video decoding needed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from faceshard.records import VideoTask
from faceshard.storage.manifest import ShardPlan
from faceshard.storage.schema import rows_to_tables, table_schemas, video_row


def fake_videos(n: int, prefix: str = "v", splits: tuple[str, ...] = ("train",)) -> list[VideoTask]:
    """`n` VideoTasks with alternating labels and round-robin splits."""
    return [
        VideoTask(
            video_id=f"{prefix}{i:05d}",
            path=f"/data/{prefix}{i:05d}.mp4",
            label=i % 2,
            method=None if i % 2 == 0 else "deepfakes",
            split=splits[i % len(splits)],
        )
        for i in range(n)
    ]


def fake_shard_tables(
    plan: ShardPlan,
    faces_per_video: int = 3,
    emb_dim: int | None = 8,
    emb_dtype: str = "float16",
    errors: dict[str, str] | None = None,
    with_crop: bool = False,
    seed: int = 0,
) -> dict[str, pa.Table]:
    """The three tables a worker would commit for `plan`: `errors` maps video_id → error text.

    Embedding values encode (video index, face index) so tests can check which rows they read.
    """
    errors = errors or {}
    rng = np.random.default_rng(seed + plan.shard_id)
    video_rows: list[dict[str, Any]] = []
    face_rows: list[dict[str, Any]] = []
    identity_rows: list[dict[str, Any]] = []
    for video in plan.videos:
        error = errors.get(video.video_id) or video.error
        n_faces = 0 if error else faces_per_video
        video_rows.append(
            video_row(
                video,
                plan.shard_id,
                status="error" if error else ("ok" if n_faces else "no_faces"),
                error=error,
                fps=None if error else 25.0,
                n_frames=None if error else 100,
                n_frames_container=None if error else 100,
                width=None if error else 640,
                height=None if error else 360,
                n_faces=n_faces,
                n_identities=1 if n_faces else 0,
                seconds=0.5,
            )
        )
        for k in range(n_faces):
            face_rows.append(
                {
                    "video_id": video.video_id,
                    "split": video.split,
                    "frame": k * 25,
                    "face": 0,
                    "identity": 0,
                    "x1": 10.0,
                    "y1": 20.0,
                    "x2": 110.0,
                    "y2": 140.0,
                    "score": 0.99,
                    "area_ratio": 5,
                    "size_bucket": 1,
                    "emb_rgb": None if emb_dim is None else rng.standard_normal(emb_dim).astype(emb_dtype),
                    "crop": b"\x89PNG fake" if with_crop else None,
                }
            )
        if n_faces:
            identity_rows.append(
                {
                    "video_id": video.video_id,
                    "split": video.split,
                    "identity": 0,
                    "rank": 0,
                    "n_faces": n_faces,
                    "mean_side": 110.0,
                    "first_frame": 0,
                    "last_frame": (n_faces - 1) * 25,
                }
            )
    schemas = table_schemas(emb_rgb_dim=emb_dim, emb_dtype=emb_dtype, with_crop=with_crop)
    return rows_to_tables(video_rows, face_rows, identity_rows, schemas)
