"""What a build produced, aggregated from committed rows without loading the output whole.

One pass over small `videos` columns (one row per video), one streamed pass over three narrow
`faces` columns (record batches: an area-ratio histogram and unassigned faces per video), the
commit markers' stats for time and throughput, and crops read only for the few sampled videos'
shards. Shared by `faceshard report --html` (`faceshard.app.report_html`) and the Prefect artifact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from faceshard.storage import fsio
from faceshard.storage.commit import OutputState, read_state
from faceshard.storage.commit import locate as committed_path
from faceshard.storage.reader import read_table
from faceshard.storage.status import dataset_status

VIDEO_COLUMNS = [
    "video_id",
    "label",
    "method",
    "source",
    "status",
    "n_faces",
    "n_identities",
    "split",
    "shard",
]
BATCH_ROWS = 1 << 18
MANY_IDENTITIES = 4  # a video with this many identities or more is worth a look
UNASSIGNED_SHARE = 0.25  # … and so is one with this share of faces in no identity (and at least 3)


def committed_dataset(
    uri: str, table: str, shards: Sequence[int] | None = None, storage_options: dict[str, Any] | None = None
) -> tuple[ds.Dataset | None, OutputState]:
    """The committed files of `table` (of `shards`, or all) as one pyarrow dataset, and the state read.

    The one place this module touches the storage layer below the reader: the files are the ones the
    commit markers name (`read_state(...).files`), never a directory listing. None when nothing is
    committed.
    """
    fs, root = fsio.open_fs(uri, storage_options)
    state = read_state(fs, root)
    wanted = None if shards is None else set(shards)
    entries = [e for e in state.files(table) if wanted is None or e["shard"] in wanted]
    if not entries:
        return None, state
    arrow_fs = pafs.LocalFileSystem() if fsio.is_local(fs) else fs
    paths = [committed_path(fs, root, entry) for entry in entries]
    return ds.dataset(paths, format="parquet", filesystem=arrow_fs), state


@dataclass
class Summary:
    """Everything the report shows; small whatever the output's size (per-video frames are narrow)."""

    uri: str
    status: dict[str, Any]  # `dataset_status`: shards, totals, failures, stage seconds
    metadata: dict[str, Any]
    videos: pl.DataFrame  # VIDEO_COLUMNS of every committed video (+ unassigned faces when scanned)
    shards: pl.DataFrame  # per committed shard: started/committed seconds from the first start, videos, …
    area_ratio_counts: np.ndarray | None = None  # faces per area ratio 0…100 (None: faces not scanned)
    has_crops: bool = False
    faces_scanned: int = 0

    @property
    def wall_seconds(self) -> float | None:
        """From the first shard's start to the last commit (across every build of the output)."""
        if self.shards.is_empty():
            return None
        return float(self.shards["committed_s"].max())  # type: ignore[arg-type]

    @property
    def preset(self) -> str | None:
        return (self.metadata.get("config") or {}).get("preset")


def summarize(uri: str, storage_options: dict[str, Any] | None = None, faces: bool = True) -> Summary:
    """Aggregate the committed output at `uri`; `faces=False` skips the faces pass (artifact use)."""
    status = dataset_status(uri, storage_options)
    videos = pl.from_arrow(read_table(uri, "videos", columns=VIDEO_COLUMNS, storage_options=storage_options))
    assert isinstance(videos, pl.DataFrame)
    dataset, state = committed_dataset(uri, "faces", storage_options=storage_options)
    summary = Summary(uri, status, state.metadata, videos, _shard_times(state.markers))
    if dataset is not None:
        summary.has_crops = "crop" in dataset.schema.names
    if faces:
        _scan_faces(summary, dataset)
    return summary


def _scan_faces(summary: Summary, dataset: ds.Dataset | None) -> None:
    """Area-ratio histogram and unassigned faces per video, batch by batch (three narrow columns)."""
    counts = np.zeros(101, dtype=np.int64)
    unassigned: list[pl.DataFrame] = []
    scanned = 0
    if dataset is not None:
        columns = ["video_id", "identity", "area_ratio"]
        for batch in dataset.to_batches(columns=columns, batch_size=BATCH_ROWS):
            scanned += batch.num_rows
            ratio = batch.column("area_ratio").drop_null().to_numpy(zero_copy_only=False)
            counts += np.bincount(np.clip(ratio, 0, 100).astype(np.int64), minlength=101)
            lonely = batch.filter(pc.equal(batch.column("identity"), -1)).select(["video_id"])
            if lonely.num_rows:
                frame = pl.from_arrow(lonely)
                assert isinstance(frame, pl.DataFrame)
                unassigned.append(frame.group_by("video_id").agg(unassigned=pl.len().cast(pl.Int64)))
    per_video = (
        pl.concat(unassigned).group_by("video_id").agg(pl.col("unassigned").sum())
        if unassigned
        else pl.DataFrame(schema={"video_id": pl.String, "unassigned": pl.Int64})
    )
    summary.videos = summary.videos.join(per_video, on="video_id", how="left").with_columns(
        pl.col("unassigned").fill_null(0)
    )
    summary.area_ratio_counts = counts
    summary.faces_scanned = scanned


def _shard_times(markers: dict[int, dict[str, Any]]) -> pl.DataFrame:
    """Per committed shard: when it started and committed (seconds from the first start), its work."""
    rows = []
    for shard, marker in markers.items():
        stats = marker.get("stats") or {}
        committed = _timestamp(marker.get("committed_at"))
        if committed is None:
            continue
        seconds = float(stats.get("seconds") or 0.0)
        rows.append(
            {
                "shard": shard,
                "started": committed - seconds,
                "committed": committed,
                "seconds": seconds,
                "videos": int(stats.get("videos", marker["rows"]["videos"])),
                "faces": int(stats.get("faces", marker["rows"]["faces"])),
            }
        )
    if not rows:
        schema = {"shard": pl.Int64, "started_s": pl.Float64, "committed_s": pl.Float64}
        return pl.DataFrame(schema=schema | {"seconds": pl.Float64, "videos": pl.Int64, "faces": pl.Int64})
    frame = pl.DataFrame(rows)
    first = frame["started"].min()
    return (
        frame.with_columns(
            started_s=pl.col("started") - first,
            committed_s=pl.col("committed") - first,
        )
        .drop("started", "committed")
        .sort("committed_s")
    )


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


@dataclass
class Pick:
    """A video chosen for a contact sheet, and why."""

    video_id: str
    reasons: list[str]
    n_identities: int
    n_faces: int
    label: int
    method: str | None


def pick_videos(videos: pl.DataFrame, limit: int, listed: int = 100) -> tuple[list[Pick], pl.DataFrame, int]:
    """Videos worth looking at: multi-identity ones (at most half the sheets, most identities first),
    then suspicious clustering, then any with faces.

    Suspicious: MANY_IDENTITIES or more identities, UNASSIGNED_SHARE of the faces (at least 3) in no
    identity, or a fake whose identity count differs from its `source` video's. Returns at most
    `limit` picks, the first `listed` flagged videos that did not fit (video_id, why) and how many
    flagged videos did not fit.
    """
    frame = videos.filter(pl.col("status") == "ok")
    if "unassigned" not in frame.columns:
        frame = frame.with_columns(unassigned=pl.lit(0, pl.Int64))
    sources = videos.select(source=pl.col("video_id"), source_identities=pl.col("n_identities"))
    frame = frame.join(sources, on="source", how="left")
    differs = (pl.col("label") == 1) & pl.col("source_identities").is_not_null()
    differs = differs & (pl.col("source_identities") != pl.col("n_identities"))
    lonely = (pl.col("unassigned") >= 3) & (pl.col("unassigned") >= UNASSIGNED_SHARE * pl.col("n_faces"))
    frame = frame.with_columns(
        multi=pl.col("n_identities") >= 2,
        many=pl.col("n_identities") >= MANY_IDENTITIES,
        lonely=lonely,
        differs=differs.fill_null(False),
    ).with_columns(suspicious=pl.col("many") | pl.col("lonely") | pl.col("differs"))
    frame = frame.with_columns(flagged=pl.col("multi") | pl.col("suspicious"), why=_why())
    order = ["n_identities", "suspicious", "differs", "many", "lonely", "unassigned", "video_id"]
    descending = [True] * (len(order) - 1) + [False]
    multi = frame.filter(pl.col("multi")).sort(order, descending=descending).head((limit + 1) // 2)
    left = frame.filter(~pl.col("video_id").is_in(multi["video_id"].implode()))
    suspicious = left.filter(pl.col("suspicious")).sort(
        ["differs", "many", "lonely", "unassigned", "video_id"], descending=[True, True, True, True, False]
    )
    chosen = pl.concat([multi, suspicious.head(limit - multi.height)])
    left = frame.filter(~pl.col("video_id").is_in(chosen["video_id"].implode()))
    fill = left.filter(pl.col("n_faces") > 0).sort(order, descending=descending)
    chosen = pl.concat([chosen, fill.head(limit - chosen.height)])
    unshown = left.filter(pl.col("flagged") & ~pl.col("video_id").is_in(chosen["video_id"].implode()))
    unshown = unshown.sort(["suspicious", *order], descending=[True, *descending])
    picks = [
        Pick(
            row["video_id"],
            row["why"] or ["sample"],
            row["n_identities"],
            row["n_faces"],
            row["label"],
            row["method"],
        )
        for row in chosen.iter_rows(named=True)
    ]
    listed_frame = unshown.head(listed).select("video_id", "label", "method", pl.col("why").list.join("; "))
    return picks, listed_frame, unshown.height


def _why() -> pl.Expr:
    """The reasons a video is flagged, as a list of sentences."""
    parts = [
        pl.when(pl.col("multi")).then(pl.format("{} identities", pl.col("n_identities"))),
        pl.when(pl.col("many")).then(pl.lit(f"many identities (≥ {MANY_IDENTITIES})")),
        pl.when(pl.col("lonely")).then(pl.format("{} of {} faces in no identity", "unassigned", "n_faces")),
        pl.when(pl.col("differs")).then(
            pl.format("its source {} has {} identities", "source", "source_identities")
        ),
    ]
    return pl.concat_list(parts).list.drop_nulls()


def sample_crops(
    uri: str, picks: list[Pick], shards: dict[str, int], per_identity: int = 10, storage_options: Any = None
) -> dict[str, dict[int, list[tuple[int, bytes | None]]]]:
    """Per picked video, per identity: up to `per_identity` (frame, crop bytes) in temporal order.

    Reads only the picked videos' shards and rows (a filter on video_id pushed into the scan).
    """
    ids = [p.video_id for p in picks]
    dataset, _ = committed_dataset(uri, "faces", sorted({shards[v] for v in ids}), storage_options)
    if dataset is None or not ids:
        return {}
    columns = ["video_id", "frame", "face", "identity"] + (["crop"] if "crop" in dataset.schema.names else [])
    table = dataset.to_table(columns=columns, filter=pc.field("video_id").isin(ids))
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    if "crop" not in frame.columns:
        frame = frame.with_columns(crop=pl.lit(None, pl.Binary))
    out: dict[str, dict[int, list[tuple[int, bytes | None]]]] = {}
    for (video_id, identity), group in frame.sort("frame", "face").group_by(
        "video_id", "identity", maintain_order=True
    ):
        take = np.unique(
            np.linspace(0, group.height - 1, min(per_identity, group.height)).round().astype(int)
        )
        rows = group[take.tolist()]
        out.setdefault(str(video_id), {})[int(identity)] = list(zip(rows["frame"], rows["crop"], strict=True))  # type: ignore[arg-type]
    return out


def headline(summary: Summary) -> dict[str, Any]:
    """The numbers at the top of the report and of the Prefect artifact."""
    status = summary.status
    wall = summary.wall_seconds
    return {
        "videos": status["totals"]["videos"],
        "faces": status["totals"]["faces"],
        "identities": status["totals"]["identities"],
        "shards committed": status["committed"],
        "shards failed": status["failed"],
        "shards pending": status["pending"],
        "failed videos": len(status["failed_videos"]),
        "fingerprint": status["fingerprint"],
        "preset": summary.preset or "?",
        "random weights": ", ".join(status["random_weights"]) or "none",
        "build wall time": "?" if wall is None else f"{wall:,.1f} s",
    }


def videos_by_group(videos: pl.DataFrame) -> pl.DataFrame:
    """Videos, faces and identities per split, label, method and status."""
    return (
        videos.group_by("split", "label", "method", "status")
        .agg(videos=pl.len(), faces=pl.col("n_faces").sum(), identities=pl.col("n_identities").sum())
        .sort("split", "label", "method", "status", nulls_last=True)
    )


def summary_markdown(summary: Summary, max_reasons: int = 10) -> str:
    """The headline, statuses and failure reasons as Markdown (the Prefect UI renders it)."""
    lines = [f"# faceshard build: `{summary.uri}`", ""]
    if summary.status["random_weights"]:
        lines += [
            f"> **Random weights**: {', '.join(summary.status['random_weights'])} ran without"
            " trained weights; embeddings/depth from them carry no signal.",
            "",
        ]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in headline(summary).items()]
    statuses = summary.status["video_status"]
    lines += ["", "**videos by status**: " + (", ".join(f"{k} {v}" for k, v in statuses.items()) or "none")]
    reasons = list(summary.status["failed_by_reason"].items())
    if reasons:
        lines += ["", "| failed videos | reason |", "|---:|---|"]
        lines += [f"| {n} | {_md_cell(reason)} |" for reason, n in reasons[:max_reasons]]
        if len(reasons) > max_reasons:
            lines.append(f"| … | {len(reasons) - max_reasons} more reasons |")
    for shard in summary.status["failed_shards"]:
        lines.append(f"- shard {shard['shard']} failed: {_md_cell(str(shard['error']))}")
    return "\n".join(lines)


def _md_cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")[:200]
