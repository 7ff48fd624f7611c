"""Incremental planning: which videos of a manifest an output still needs, and in which shards.

A video is known to an output by its `video_id`; its path may change (a corpus copied to another
mount) without it being processed again. Every shard an output ever planned is recorded with its
video ids (`_faceshard/plan-<attempt>.parquet`, named by the log's `plan` entry), so a build of any
manifest into an existing output:

* skips every video already committed, wherever its row now sits in the manifest;
* retries shards of an earlier run that never committed with the same videos (while all of them
  are still in the manifest; otherwise the shard is dropped and its videos are planned anew);
* plans the remaining new videos, sorted by id, into NEW shards numbered after every id ever used
  (the same set of new videos gives the same shards; a late commit of a dropped shard can never
  land on a new one);
* with `sources` (source-aware builds), keeps a source and its fakes together: new videos are
  ordered by group (the source's id, or the video's own), the source first, and a group never
  splits across shards: one that does not fit what is left of a shard starts the next, and one
  larger than `shard_size` gets a shard of its own;
* leaves committed rows of videos missing from the manifest in place and counts them as
  `not_in_manifest`, until `prune` asks for them to go: a shard left with none of its videos is
  dropped, one left with some is rewritten without the others.

Everything here is columnar (polars) and pure: the storage layer reads and writes the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from faceshard.storage.commit import shard_fingerprint_of

PLAN_SCHEMA = {"shard": pl.Int64, "video_id": pl.String}


def empty_plan_frame() -> pl.DataFrame:
    return pl.DataFrame(schema=PLAN_SCHEMA)


@dataclass
class PriorPlan:
    """What an output already holds: its recorded shards and which of them are committed."""

    shards: pl.DataFrame = field(default_factory=empty_plan_frame)  # shard, video_id
    fingerprints: dict[int, str] = field(default_factory=dict)
    committed: set[int] = field(default_factory=set)
    next_shard: int = 0  # the first id no plan, marker or failure record has used


@dataclass
class BuildPlan:
    """The output's plan after this build, and what the build has to do to get there."""

    shards: pl.DataFrame  # shard, video_id: every shard of the plan, kept ones first
    recorded: dict[int, str]  # fingerprints of shards carried over unchanged
    todo: list[int]  # shards to process (never committed), ascending
    committed: list[int]  # shards committed already and kept
    videos_total: int  # rows of the manifest
    videos_skipped: int  # manifest videos committed already
    videos_to_process: int
    not_in_manifest: int  # committed videos the manifest no longer lists (after any pruning)
    dropped: list[int] = field(default_factory=list)  # never-committed shards whose videos left
    prune_drop: list[int] = field(default_factory=list)  # committed shards removed whole by prune
    prune_keep: dict[int, list[str]] = field(default_factory=dict)  # shards rewritten by prune
    pruned_videos: int = 0

    @property
    def shards_total(self) -> int:
        return self.shards["shard"].n_unique()

    def shard_ids(self) -> list[int]:
        return self.shards["shard"].unique(maintain_order=True).to_list()

    def fingerprints(self, dataset_fp: str) -> dict[int, str]:
        """Every shard's fingerprint: recorded ones reused, new and rewritten ones computed."""
        out = dict(self.recorded)
        missing = self.shards.filter(~pl.col("shard").is_in(list(out)))
        for (shard,), group in missing.group_by("shard", maintain_order=True):
            out[shard] = shard_fingerprint_of(dataset_fp, shard, group["video_id"].to_list())
        return {shard: out[shard] for shard in self.shard_ids()}

    def committed_shard_of(self, video_ids: list[str]) -> dict[str, int]:
        """The committed shard of each of `video_ids` that one holds (the others are left out)."""
        rows = self.shards.filter(
            pl.col("shard").is_in(self.committed)
            & pl.col("video_id").is_in(pl.Series(video_ids, dtype=pl.String).implode())
        )
        return dict(zip(rows["video_id"].to_list(), rows["shard"].to_list(), strict=True))

    def summary(self) -> dict[str, Any]:
        return {
            "videos": self.videos_total,
            "shards": self.shards_total,
            "pending": len(self.todo),
            "committed": len(self.committed),
            "videos_to_process": self.videos_to_process,
            "videos_skipped": self.videos_skipped,
            "not_in_manifest": self.not_in_manifest,
            "dropped_shards": self.dropped,
            "pruned_videos": self.pruned_videos,
            "pruned_shards": sorted([*self.prune_drop, *self.prune_keep]),
        }


def plan_build(
    manifest_ids: pl.Series,
    prior: PriorPlan,
    shard_size: int,
    prune: bool = False,
    sources: pl.Series | None = None,
) -> BuildPlan:
    """Plan a build of a manifest (its unique video ids) into an output holding `prior`.

    `sources`, aligned with `manifest_ids`: each video's source video id (null for none) to keep
    groups whole; None plans every video on its own.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    wanted = pl.DataFrame({"video_id": manifest_ids}).with_columns(in_manifest=pl.lit(True))
    rows = (
        prior.shards.join(wanted, on="video_id", how="left", maintain_order="left")
        .with_columns(
            pl.col("in_manifest").fill_null(False),
            pl.col("shard").is_in(sorted(prior.committed)).alias("committed"),
        )
        .with_columns(
            pl.col("in_manifest").all().over("shard").alias("all_in"),
            pl.col("in_manifest").any().over("shard").alias("any_in"),
        )
    )
    committed_rows = rows.filter("committed")
    gone = committed_rows.filter(~pl.col("in_manifest"))
    dropped = _ids(rows.filter(~pl.col("committed") & ~pl.col("all_in")))
    keep = pl.col("committed") | pl.col("all_in")
    prune_drop: list[int] = []
    prune_keep: dict[int, list[str]] = {}
    if prune and gone.height:
        prune_drop = _ids(committed_rows.filter(~pl.col("any_in")))
        partial = committed_rows.filter(pl.col("any_in") & ~pl.col("all_in") & pl.col("in_manifest"))
        prune_keep = {
            shard: group["video_id"].to_list()
            for (shard,), group in partial.group_by("shard", maintain_order=True)
        }
        keep = (pl.col("committed") & pl.col("in_manifest")) | (~pl.col("committed") & pl.col("all_in"))
    kept = rows.filter(keep)
    new_ids = wanted.join(kept.select("video_id"), on="video_id", how="anti")["video_id"].sort()
    new = _pack(new_ids, manifest_ids, sources, shard_size, prior.next_shard)
    shards = pl.concat([kept.select(list(PLAN_SCHEMA)), new.select(list(PLAN_SCHEMA))])
    changed = set(prune_keep)
    recorded = {s: fp for s, fp in prior.fingerprints.items() if s not in changed}
    committed = [s for s in _ids(kept.filter("committed")) if s not in changed]
    todo = sorted({*_ids(kept.filter(~pl.col("committed"))), *_ids(new)})
    return BuildPlan(
        shards=shards,
        recorded=recorded,
        todo=todo,
        committed=committed,
        videos_total=len(manifest_ids),
        videos_skipped=committed_rows.filter("in_manifest").height,
        videos_to_process=kept.filter(~pl.col("committed")).height + new.height,
        not_in_manifest=0 if prune else gone.height,
        dropped=dropped,
        prune_drop=prune_drop,
        prune_keep=prune_keep,
        pruned_videos=gone.height if prune else 0,
    )


def _pack(
    new_ids: pl.Series, manifest_ids: pl.Series, sources: pl.Series | None, shard_size: int, first: int
) -> pl.DataFrame:
    """(shard, video_id) of the new videos: consecutive runs of `shard_size`, groups never split."""
    if sources is None:
        return (
            pl.DataFrame({"video_id": new_ids})
            .with_row_index("index")
            .select((pl.col("index").cast(pl.Int64) // shard_size + first).alias("shard"), "video_id")
        )
    links = pl.DataFrame({"video_id": manifest_ids, "source": sources.cast(pl.String)})
    ordered = (
        pl.DataFrame({"video_id": new_ids})
        .join(links, on="video_id", how="left", maintain_order="left")
        .with_columns(group=pl.coalesce("source", "video_id"))
        .sort("group", pl.col("source").is_not_null(), "video_id")
    )
    sizes = ordered.group_by("group", maintain_order=True).len()
    shard_of_group, shard, used = [], first, 0
    for size in sizes["len"].to_list():
        if used and used + size > shard_size:
            shard, used = shard + 1, 0
        shard_of_group.append(shard)
        used += size
        if used >= shard_size:
            shard, used = shard + 1, 0
    shards = sizes.select("group", shard=pl.Series(shard_of_group, dtype=pl.Int64))
    return ordered.join(shards, on="group", how="left", maintain_order="left").select(list(PLAN_SCHEMA))


def _ids(frame: pl.DataFrame) -> list[int]:
    return sorted(frame["shard"].unique().to_list())
