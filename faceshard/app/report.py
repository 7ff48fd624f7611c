"""`faceshard report`: what a build produced, read from committed rows only."""

from __future__ import annotations

from typing import Any

import polars as pl
from rich.console import Group
from rich.table import Table

from faceshard.storage.reader import read_table
from faceshard.storage.status import dataset_status


def _table(title: str, frame: pl.DataFrame) -> Table:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(column, justify="right" if frame[column].dtype.is_numeric() else "left")
    for row in frame.iter_rows():
        table.add_row(*("" if value is None else str(value) for value in row))
    return table


def _report_frames(uri: str) -> tuple[dict[str, Any], dict[str, pl.DataFrame], int, int]:
    """(status, the report's tables by name, faces, faces without identity) from committed rows."""
    status = dataset_status(uri)
    videos = pl.from_arrow(read_table(uri, "videos"))
    faces = pl.from_arrow(read_table(uri, "faces", columns=["video_id", "size_bucket", "identity"]))
    tables = {
        "videos by split, label, method, status": (
            videos.group_by("split", "label", "method", "status")
            .agg(videos=pl.len(), faces=pl.col("n_faces").sum(), identities=pl.col("n_identities").sum())
            .sort("split", "label", "method", "status", nulls_last=True)
        ),
        "identities per video": videos.group_by("n_identities").agg(videos=pl.len()).sort("n_identities"),
        "faces by size bucket (MINTIME, 1…20)": (
            faces.group_by("size_bucket").agg(faces=pl.len()).sort("size_bucket")
        ),
        "seconds per stage (all shards)": pl.DataFrame(
            {"stage": list(status["stage_seconds"]), "seconds": list(status["stage_seconds"].values())}
        ).sort("seconds", descending=True),
    }
    return status, tables, faces.height, faces.filter(pl.col("identity") == -1).height


def report_data(uri: str) -> dict[str, Any]:
    """The report as JSON-ready data (`faceshard report --json`): the same numbers as the tables."""
    status, tables, faces, unassigned = _report_frames(uri)
    keys = ("videos_by_split", "identities_per_video", "faces_by_size_bucket", "seconds_per_stage")
    return {
        "uri": uri,
        "fingerprint": status["fingerprint"],
        **{k: status[k] for k in ("shards_total", "committed", "failed", "pending")},
        "faces": faces,
        "faces_without_identity": unassigned,
        "random_weights": status.get("random_weights") or [],
        **{key: frame.to_dicts() for key, frame in zip(keys, tables.values(), strict=True)},
    }


def dataset_report(uri: str) -> Group:
    """Videos per split/label/method and status, faces and identities per video, size buckets, stage time."""
    status, tables, faces, unassigned = _report_frames(uri)
    header = Table.grid()
    header.add_row(f"[bold]{uri}[/]  fingerprint {status['fingerprint']}")
    header.add_row(
        f"shards {status['committed']}/{status['shards_total']} committed, {status['failed']} failed, "
        f"{status['pending']} pending; {faces} faces, {unassigned} without identity"
    )
    if status.get("random_weights"):
        header.add_row(f"[yellow]random weights: {', '.join(status['random_weights'])}[/]")
    return Group(header, *(_table(title, frame) for title, frame in tables.items()))
