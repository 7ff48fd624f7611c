"""`faceshard report`: what a build produced, read from committed rows only."""

from __future__ import annotations

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


def dataset_report(uri: str) -> Group:
    """Videos per split/label/method and status, faces and identities per video, size buckets, stage time."""
    status = dataset_status(uri)
    videos = pl.from_arrow(read_table(uri, "videos"))
    faces = pl.from_arrow(read_table(uri, "faces", columns=["video_id", "size_bucket", "identity"]))
    per_split = (
        videos.group_by("split", "label", "method", "status")
        .agg(videos=pl.len(), faces=pl.col("n_faces").sum(), identities=pl.col("n_identities").sum())
        .sort("split", "label", "method", "status", nulls_last=True)
    )
    identities = videos.group_by("n_identities").agg(videos=pl.len()).sort("n_identities")
    buckets = faces.group_by("size_bucket").agg(faces=pl.len()).sort("size_bucket")
    unassigned = faces.filter(pl.col("identity") == -1).height
    stages = pl.DataFrame(
        {"stage": list(status["stage_seconds"]), "seconds": list(status["stage_seconds"].values())}
    ).sort("seconds", descending=True)
    header = Table.grid()
    header.add_row(f"[bold]{uri}[/]  fingerprint {status['fingerprint']}")
    header.add_row(
        f"shards {status['committed']}/{status['shards_total']} committed, {status['failed']} failed, "
        f"{status['pending']} pending; {faces.height} faces, {unassigned} without identity"
    )
    if status.get("random_weights"):
        header.add_row(f"[yellow]random weights: {', '.join(status['random_weights'])}[/]")
    return Group(
        header,
        _table("videos by split, label, method, status", per_split),
        _table("identities per video", identities),
        _table("faces by size bucket (MINTIME, 1…20)", buckets),
        _table("seconds per stage (all shards)", stages),
    )
