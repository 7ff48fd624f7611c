"""Leakage-free splits: a source video, its fakes and their donors always share a split.

Groups are the connected components of the links fake → source and fake → donor. Official splits are
kept as the dataset ships them (a group they divide is reported, not moved). Where a dataset has no
validation split, or with `mintime`, the validation split is drawn as MINTIME draws it (SPEC §9): over
the training pool of N videos, class k gets `int(N/10 · count_k / N)` videos, drawn by
`random.Random(seed).sample(class_k_videos, quota_k)` with a fresh generator per class, classes in
order of first appearance. To stay leakage-free a drawn video brings its whole group, and a group that
would push any class past its quota is passed over for the next draw. Without links every group is one
video and the result is exactly MINTIME's; with links no class exceeds its quota and a shortfall is
reported.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator

import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from faceshard.intake.registry import STRATUM, sample

SPLIT_MODES = ("auto", "mintime", "none")
MINTIME_SEED = 42
TRAIN, VAL = "train", "val"


def assign_splits(
    frame: pl.DataFrame, mode: str = "auto", seed: int = MINTIME_SEED
) -> tuple[pl.DataFrame, list[str]]:
    """Final `split` per video, and notes for the user.

    auto: the dataset's own splits (unassigned → train); a validation split is drawn from train when
    the dataset has none. mintime: validation redrawn from train + val (test kept). none: the
    dataset's own splits only (unassigned → 'all').
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"split mode must be one of {', '.join(SPLIT_MODES)}, got {mode!r}")
    groups = link_groups(frame)
    notes = divided_groups_note(frame, groups)
    if mode == "none":
        return frame.with_columns(pl.col("split").fill_null("all")), notes
    split = frame["split"].fill_null(TRAIN)
    if mode == "auto" and (split == VAL).any():
        return frame.with_columns(split), notes
    split = split.replace(VAL, TRAIN)
    pool = np.flatnonzero((split == TRAIN).to_numpy())
    chosen, shortfall = mintime_validation(frame[STRATUM].to_list(), groups, pool, seed)
    values = split.to_numpy().astype(object)
    values[chosen] = VAL
    if shortfall:
        notes.append(
            "validation split short of MINTIME's per-class count where whole groups did not fit: "
            + ", ".join(f"{k}: {got}/{want}" for k, (got, want) in shortfall.items())
        )
    return frame.with_columns(pl.Series("split", values, dtype=pl.String)), notes


def mintime_quotas(strata: list[str]) -> dict[str, int]:
    """MINTIME's per-class validation counts over a training pool, in order of first appearance."""
    total = len(strata)
    size = total / 10
    return {k: int(size * (count / total)) for k, count in Counter(strata).items()}


def mintime_validation(
    strata: list[str], groups: np.ndarray, pool: np.ndarray, seed: int = MINTIME_SEED
) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """Indices (into the frame) drawn into validation from `pool`, and {class: (got, quota)} shortfalls."""
    pool_strata = [strata[i] for i in pool]
    quotas = mintime_quotas(pool_strata)
    members: dict[str, list[int]] = {k: [] for k in quotas}
    for index, stratum in zip(pool.tolist(), pool_strata, strict=True):
        members[stratum].append(index)
    # Groups are restricted to the pool: a test member never follows its group into validation.
    in_pool = np.zeros(len(strata), dtype=bool)
    in_pool[pool] = True
    group_members: dict[int, list[int]] = {}
    singletons = not len(pool) or int(np.bincount(groups[pool]).max()) <= 1
    if not singletons:
        for index in pool.tolist():
            group_members.setdefault(int(groups[index]), []).append(index)
    chosen: set[int] = set()
    taken: Counter[str] = Counter()
    for stratum, quota in quotas.items():
        if taken[stratum] >= quota:
            continue
        for index in _draw_order(members[stratum], quota, seed):
            if index in chosen:
                continue
            group = [index] if singletons else group_members[int(groups[index])]
            adds = Counter(strata[i] for i in group)
            if any(taken[k] + n > quotas[k] for k, n in adds.items()):
                continue
            chosen.update(group)
            taken.update(adds)
            if taken[stratum] >= quota:
                break
    shortfall = {k: (taken[k], q) for k, q in quotas.items() if taken[k] < q}
    return np.array(sorted(chosen), dtype=np.int64), shortfall


def _draw_order(members: list[int], quota: int, seed: int) -> Iterator[int]:
    """MINTIME's draw first (`Random(seed).sample(members, quota)`), then the rest, shuffled, lazily."""
    rng = random.Random(seed)
    head = rng.sample(members, quota)
    yield from head
    drawn = set(head)
    rest = [m for m in members if m not in drawn]
    rng.shuffle(rest)
    yield from rest


def link_groups(frame: pl.DataFrame) -> np.ndarray:
    """Component label per row: rows joined by fake → source and fake → donor links share one."""
    n = len(frame)
    index = pl.DataFrame({"video_id": frame["video_id"], "row": np.arange(n, dtype=np.int64)})
    edges = []
    for column in ("source", "donor"):
        linked = (
            frame.select(pl.int_range(n, dtype=pl.Int64).alias("fake"), pl.col(column).alias("video_id"))
            .drop_nulls("video_id")
            .join(index, on="video_id", how="inner")
        )
        edges.append(linked.select("fake", "row"))
    edge_frame = pl.concat(edges)
    if not len(edge_frame):
        return np.arange(n)
    graph = coo_matrix(
        (
            np.ones(len(edge_frame), dtype=np.int8),
            (edge_frame["fake"].to_numpy(), edge_frame["row"].to_numpy()),
        ),
        shape=(n, n),
    )
    return connected_components(graph, directed=False)[1]


def divided_groups_note(frame: pl.DataFrame, groups: np.ndarray) -> list[str]:
    """Groups whose members the dataset's own lists put into different splits (official leakage)."""
    split = frame["split"]
    if split.null_count() == len(frame):
        return []
    per_group = (
        pl.DataFrame({"group": groups, "split": split.fill_null(TRAIN), "video_id": frame["video_id"]})
        .group_by("group")
        .agg(pl.col("split").n_unique().alias("n"), pl.col("video_id").first())
        .filter(pl.col("n") > 1)
    )
    if not len(per_group):
        return []
    return [
        f"the dataset's own splits divide {len(per_group)} source/fake group(s) (kept as shipped), "
        f"e.g. the groups of {sample(sorted(per_group['video_id'].to_list()))}"
    ]
