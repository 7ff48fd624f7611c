"""The `detections` side table: what a source video leaves in the output for fakes built later.

A source-aware build commits, with each shard's rows and in the same commit entry, one `detections`
file per split (schema in storage/schema.py): for every source video of the shard, the detector's
answer on every frame it was asked about (face-less frames and sampling fallback tries included, in
order) and, per kept face, its identity, thumbnail and identity embedding. A later build that adds a
fake of that source reads it back here (`read_sources`) instead of decoding and detecting the source
again. Shards committed by an older faceshard have no such file: their sources read as `missing`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from faceshard.storage.commit import Output
from faceshard.storage.schema import side_table

TABLE = "detections"
VIDEO_COLUMNS = ["video_id", "status", "error", "fps", "width", "height", "n_frames", "n_frames_container"]


@dataclass
class CommittedSource:
    """One committed source video: its `videos` row (None: not in that shard) and its `detections` rows
    (None: its shard was committed without the side table, by an older faceshard)."""

    video_id: str
    shard: int
    video: dict[str, Any] | None
    rows: list[dict[str, Any]] | None


def detections_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """One shard's `detections` side table from row dicts (`video_id`, `frame`, … as in the schema)."""
    return side_table(TABLE, rows)


def read_sources(output: Output, where: Mapping[str, int]) -> dict[str, CommittedSource]:
    """The committed `videos` and `detections` rows of each source video in `where` (id → its shard):
    one read of each table per shard, whatever the number of sources or fakes."""
    by_shard: dict[int, list[str]] = {}
    for video_id, shard in where.items():
        by_shard.setdefault(shard, []).append(video_id)
    found: dict[str, CommittedSource] = {}
    for shard, ids in sorted(by_shard.items()):
        wanted = pa.array(sorted(ids), pa.string())
        videos = output.committed_rows(shard, "videos", VIDEO_COLUMNS)
        videos = videos.filter(pc.is_in(videos["video_id"], value_set=wanted)).to_pylist()
        rows_of: dict[str, list[dict[str, Any]]] | None = None
        marker = output.marker(shard)
        if marker is not None and TABLE in marker["files"]:
            table = output.committed_rows(shard, TABLE)
            table = table.filter(pc.is_in(table["video_id"], value_set=wanted))
            rows_of = {video_id: [] for video_id in ids}
            for row in table.drop_columns(["split", "shard"]).to_pylist():
                rows_of[row["video_id"]].append(row)
        video_of = {row["video_id"]: row for row in videos}
        for video_id in ids:
            rows = None if rows_of is None else rows_of[video_id]
            found[video_id] = CommittedSource(video_id, shard, video_of.get(video_id), rows)
    return found
