"""`faceshard report URI --html FILE`: one self-contained page to look at what a build produced.

Everything is inline (matplotlib PNGs and crop thumbnails as data URIs, CSS in the page) and the
page carries a Content-Security-Policy that forbids any request but `data:` images, so opening it
never touches the network. Aggregates come from `faceshard.storage.summary` (streamed, committed rows only).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from faceshard.storage.summary import (
    Pick,
    Summary,
    headline,
    pick_videos,
    sample_crops,
    summarize,
    videos_by_group,
)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
THUMB_PX = 72
BUCKET_WIDTH = 5  # MINTIME's size buckets: (0,5), (6,10), …, (96,100) percent of the frame

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.cards{display:flex;flex-wrap:wrap;gap:8px}.card{border:1px solid #ddd;border-radius:6px;padding:6px 10px}
.card b{display:block;font-size:18px}.card span{font-size:12px;color:#666}
.banner{background:#fff3cd;border:1px solid #e0b100;padding:8px 12px;border-radius:6px;margin:8px 0}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}
.sheet{margin:12px 0;padding:8px;border:1px solid #ddd;border-radius:6px}
.row{display:flex;align-items:center;gap:3px;margin:3px 0}.row .who{width:120px;font-size:12px}
.row img{height:72px}.why{color:#a33;font-size:13px}code{background:#f4f4f4;padding:0 3px}
"""


def write_report(
    uri: str,
    path: str,
    storage_options: dict[str, Any] | None = None,
    sheets: int = 12,
    failed_rows: int = 50,
) -> Summary:
    """Aggregate the output at `uri` and write the page to `path`; returns the summary used."""
    summary = summarize(uri, storage_options)
    page = render(summary, storage_options, sheets=sheets, failed_rows=failed_rows)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return summary


def render(
    summary: Summary, storage_options: dict[str, Any] | None = None, sheets: int = 12, failed_rows: int = 50
) -> str:
    """The whole page as one string."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>faceshard report: {esc(summary.uri)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>faceshard report: <code>{esc(summary.uri)}</code></h1>",
    ]
    random = summary.status["random_weights"]
    if random:
        parts.append(
            f"<div class='banner' id='random-weights'><b>Random weights:</b> {esc(', '.join(random))} ran"
            " from a seeded random init (no trained weights were available): their columns carry no"
            " learned signal.</div>"
        )
    parts.append("<div class='cards' id='headline'>")
    for key, value in headline(summary).items():
        parts.append(f"<div class='card'><b>{esc(str(value))}</b><span>{esc(key)}</span></div>")
    parts.append("</div>")
    parts += _plots(summary)
    parts += _sheets(summary, storage_options, sheets)
    parts += _failures(summary, failed_rows)
    parts.append("<h2>Videos by split, label, method, status</h2>")
    parts.append(_table(videos_by_group(summary.videos)))
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------- plots


def _plots(summary: Summary) -> list[str]:
    plots: list[tuple[str, Callable[[Summary], Figure | None]]] = [
        ("Face/frame area ratio, MINTIME size buckets", _area_ratio),
        ("Faces per video", _faces_per_video),
        ("Identities per video by label and method", _identities_per_video),
        ("Videos by method, split and label", _videos_by_method),
        ("Video status and error reasons", _status_and_errors),
        ("Seconds per stage (all shards)", _stage_seconds),
        ("Throughput per shard over time", _throughput),
    ]
    out = ["<h2>Plots</h2><div class='plots'>"]
    for title, draw in plots:
        figure = draw(summary)
        if figure is None:
            out.append(f"<p>{html.escape(title)}: nothing to plot.</p>")
            continue
        figure.suptitle(title, fontsize=11)
        out.append(f"<figure class='plot'><img alt='{html.escape(title)}' src='{_png(figure)}'></figure>")
    out.append("</div>")
    return out


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)  # constrained layout already fits the figure
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure(width: float = 6.4, height: float = 3.6) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width, height), layout="constrained")  # no pyplot: no global state
    return figure, figure.subplots()


def _area_ratio(summary: Summary) -> Figure | None:
    counts = summary.area_ratio_counts
    if counts is None or not counts.sum():
        return None
    top = int(np.nonzero(counts)[0].max())
    last = min(100, max(4 * BUCKET_WIDTH, (top // BUCKET_WIDTH + 1) * BUCKET_WIDTH))
    figure, axes = _figure()
    axes.bar(np.arange(last + 1), counts[: last + 1], width=1.0, color="#4c72b0")
    if counts.max() > 100 * counts[counts > 0].min():  # a long tail of large faces stays visible
        axes.set_yscale("log")
    else:
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("crop area / frame area (%)")
    axes.set_ylabel("faces")
    for edge in range(BUCKET_WIDTH, last, BUCKET_WIDTH):
        axes.axvline(edge + 0.5, color="#c44e52", lw=0.8, ls="--")
    for bucket in range(1, last // BUCKET_WIDTH + 2):
        centre = (bucket - 1) * BUCKET_WIDTH + 2.5
        if centre <= last:
            axes.text(
                centre,
                1.0,
                str(bucket),
                transform=axes.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=7,
                color="#c44e52",
            )
    axes.set_xlim(-0.5, last + 0.5)
    return figure


def _faces_per_video(summary: Summary) -> Figure | None:
    faces = summary.videos.filter(pl.col("status") != "error")["n_faces"].to_numpy()
    if not len(faces):
        return None
    figure, axes = _figure()
    if faces.max() < 50:  # one bar per count
        values, counts = np.unique(faces, return_counts=True)
        axes.bar(values, counts, width=0.8, color="#55a868")
    else:
        axes.hist(faces, bins=50, color="#55a868")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("faces in the video")
    axes.set_ylabel("videos")
    return figure


def _group(videos: pl.DataFrame) -> pl.Expr:
    """'real' for label 0, else the method (or 'fake')."""
    return (
        pl.when(pl.col("label") == 0)
        .then(pl.lit("real"))
        .otherwise(pl.col("method").fill_null("fake"))
        .alias("group")
    )


def _identities_per_video(summary: Summary) -> Figure | None:
    videos = summary.videos.filter(pl.col("status") == "ok")
    if videos.is_empty():
        return None
    counts = (
        videos.with_columns(_group(videos), ids=pl.col("n_identities").clip(0, 4))
        .group_by("group", "ids")
        .len()
        .pivot(on="ids", index="group", values="len")
        .fill_null(0)
        .sort("group")
    )
    figure, axes = _figure(6.4, max(2.0, 0.6 + 0.35 * counts.height))
    left = np.zeros(counts.height)
    for ids in sorted(int(c) for c in counts.columns if c != "group"):
        values = counts[str(ids)].to_numpy()
        axes.barh(counts["group"].to_list(), values, left=left, label="4+" if ids == 4 else str(ids))
        left += values
    axes.set_xlabel("videos")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(title="identities", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return figure


def _videos_by_method(summary: Summary) -> Figure | None:
    videos = summary.videos
    if videos.is_empty():
        return None
    counts = (
        videos.with_columns(_group(videos))
        .group_by("group", "split")
        .len()
        .pivot(on="split", index="group", values="len")
        .fill_null(0)
        .sort("group")
    )
    figure, axes = _figure(6.4, max(2.0, 0.6 + 0.35 * counts.height))
    left = np.zeros(counts.height)
    for split in [c for c in counts.columns if c != "group"]:
        values = counts[split].to_numpy()
        axes.barh(counts["group"].to_list(), values, left=left, label=split)
        left += values
    axes.set_xlabel("videos (label 0 = real; fakes by method)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(title="split", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return figure


def _status_and_errors(summary: Summary) -> Figure | None:
    statuses = summary.status["video_status"]
    if not statuses:
        return None
    reasons = list(summary.status["failed_by_reason"].items())[:8]
    figure = Figure(figsize=(9, 3.2), layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=[1, 2])
    colours = {"ok": "#55a868", "no_faces": "#8c8c8c", "error": "#c44e52"}
    left.bar(list(statuses), list(statuses.values()), color=[colours.get(s, "#4c72b0") for s in statuses])
    left.set_ylabel("videos")
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    if reasons:
        right.barh([_short(r, 48) for r, _ in reasons][::-1], [n for _, n in reasons][::-1], color="#c44e52")
        right.set_xlabel("failed videos")
        right.tick_params(axis="y", labelsize=7)
    else:
        right.text(0.5, 0.5, "no failed videos", ha="center", va="center")
        right.set_axis_off()
    return figure


def _stage_seconds(summary: Summary) -> Figure | None:
    stages = sorted(summary.status["stage_seconds"].items(), key=lambda item: item[1])
    if not stages:
        return None
    figure, axes = _figure(6.4, max(2.0, 0.6 + 0.3 * len(stages)))
    axes.barh([s for s, _ in stages], [v for _, v in stages], color="#8172b2")
    axes.set_xlabel("seconds (summed over shards)")
    return figure


def _throughput(summary: Summary) -> Figure | None:
    shards = summary.shards.filter(pl.col("seconds") > 0)
    if shards.is_empty():
        return None
    figure, axes = _figure()
    rate = (shards["videos"] / shards["seconds"]).to_numpy()
    axes.scatter(shards["committed_s"].to_numpy(), rate, s=10, color="#4c72b0")
    axes.set_xlabel("seconds since the first shard started (commit time)")
    axes.set_ylabel("videos / s within the shard")
    total = axes.twinx()
    total.plot(
        summary.shards["committed_s"].to_numpy(),
        np.cumsum(summary.shards["videos"].to_numpy()),
        color="#dd8452",
        lw=1,
    )
    total.set_ylabel("videos committed", color="#dd8452")
    return figure


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------- contact sheets


def _sheets(summary: Summary, storage_options: dict[str, Any] | None, limit: int) -> list[str]:
    out = ["<h2>Identity contact sheets</h2>"]
    picks, unshown, more = pick_videos(summary.videos, limit)
    if not picks:
        return [*out, "<p>No video with faces is committed.</p>"]
    out.append(
        "<p>Multi-identity videos first, then those whose clustering looks suspicious (many identities,"
        " many faces in no identity, a fake whose identity count differs from its source), then a"
        " sample. One row per identity, its crops in temporal order (frame number under each).</p>"
    )
    if not summary.has_crops:
        out.append(
            "<p class='banner' id='no-crops'>This output stores no crops, so the rows below list frames only."
            " Build with <code>--set crop.save=true</code> (setting <code>crop.save</code>) to see them.</p>"
        )
    shard_of = dict(
        summary.videos.filter(pl.col("video_id").is_in([p.video_id for p in picks]))
        .select("video_id", "shard")
        .iter_rows()
    )
    crops = sample_crops(summary.uri, picks, shard_of, storage_options=storage_options)
    for pick in picks:
        out.append(_sheet(pick, crops.get(pick.video_id, {})))
    if more:
        out.append(f"<h3>{more} more flagged videos without a sheet (first {unshown.height})</h3>")
        out.append(_table(unshown, table_id="flagged-videos"))
    return out


def _sheet(pick: Pick, identities: dict[int, list[tuple[int, bytes | None]]]) -> str:
    esc = html.escape
    label = "real" if pick.label == 0 else f"fake ({pick.method or 'no method'})"
    head = (
        f"<div class='sheet contact-sheet'><b>{esc(pick.video_id)}</b> · {esc(label)} · {pick.n_faces} faces,"
        f" {pick.n_identities} identities <span class='why'>{esc('; '.join(pick.reasons))}</span>"
    )
    rows = []
    for identity in sorted(identities, key=lambda i: (i < 0, i)):
        who = "no identity" if identity < 0 else f"identity {identity}"
        cells = []
        for frame, crop in identities[identity]:
            thumb = _thumbnail(crop)
            if thumb is None:
                cells.append(f"<span>f{frame}</span>")
            else:
                cells.append(
                    f"<figure style='margin:0'><img alt='frame {frame}' src='{thumb}'>"
                    f"<figcaption style='font-size:10px'>f{frame}</figcaption></figure>"
                )
        rows.append(f"<div class='row'><span class='who'>{who}</span>{''.join(cells)}</div>")
    return head + "".join(rows) + "</div>"


def _thumbnail(crop: bytes | None) -> str | None:
    """A small JPEG data URI of a stored crop (PNG or JPEG bytes); None when absent or unreadable."""
    if not crop:
        return None
    try:
        with Image.open(io.BytesIO(crop)) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMB_PX * 2, THUMB_PX))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


# ---------------------------------------------------------------- failures and tables


def _failures(summary: Summary, limit: int) -> list[str]:
    status = summary.status
    failed = status["failed_videos"]
    out = [f"<h2 id='failed'>Failed videos: {len(failed)}</h2>"]
    if failed:
        by_reason = pl.DataFrame(
            {"reason": list(status["failed_by_reason"]), "videos": list(status["failed_by_reason"].values())}
        )
        out.append(_table(by_reason))
        shown = pl.DataFrame(failed[:limit]).select("video_id", "shard", "error", "path")
        title = f"first {len(shown)} of {len(failed)}" if len(failed) > limit else f"all {len(failed)}"
        out.append(f"<p>{title}:</p>")
        out.append(_table(shown, table_id="failed-videos"))
    if status["failed_shards"]:
        out.append(f"<h2>Failed shards: {len(status['failed_shards'])}</h2>")
        out.append(_table(pl.DataFrame(status["failed_shards"]).select("shard", "error", "at")))
    return out


def _table(frame: pl.DataFrame, table_id: str | None = None) -> str:
    esc = html.escape
    attr = f" id='{table_id}'" if table_id else ""
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{'' if v is None else esc(str(v))}</td>" for v in row) + "</tr>"
        for row in frame.iter_rows()
    )
    return f"<table{attr}><tr>{head}</tr>{body}</table>"
