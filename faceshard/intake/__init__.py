"""Dataset intake: a dataset as it ships → a manifest (`faceshard manifest FORMAT ROOT -o m.parquet`).

One module per layout registers itself (forgerynet, ffpp, celebdf, dfdc, glob); this module runs the
checks every format shares — duplicate ids, links to videos that are not there — and the split rule,
then writes `path, label, method, split, video_id, source, dataset, donor` as Parquet or CSV.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl

from faceshard.errors import ManifestError
from faceshard.intake import celebdf, dfdc, ffpp, forgerynet, globs  # noqa: F401  (registers)
from faceshard.intake.registry import (
    FORMATS,
    MANIFEST_COLUMNS,
    Intake,
    get_format,
    register_format,
    sample,
)
from faceshard.intake.splits import MINTIME_SEED, SPLIT_MODES, assign_splits

__all__ = [
    "FORMATS",
    "MANIFEST_COLUMNS",
    "SPLIT_MODES",
    "Intake",
    "build_manifest",
    "register_format",
    "write_manifest",
]


def build_manifest(
    fmt: str, root: str | Path, split: str = "auto", seed: int = MINTIME_SEED, **options: Any
) -> Intake:
    """Scan ROOT as `fmt`, check it, and assign leakage-free splits. Options not given are None.

    Raises ManifestError for a ROOT that is not laid out as `fmt`, an option `fmt` does not take,
    and duplicate video ids; everything else the user should know comes back in `notes`.
    """
    spec = get_format(fmt)
    given = {k: v for k, v in options.items() if v is not None}
    if foreign := sorted(set(given) - set(spec.options)):
        takes = ", ".join(f"--{o.replace('_', '-')}" for o in spec.options) or "no options"
        shown = ", ".join(f"--{o.replace('_', '-')}" for o in foreign)
        raise ManifestError(f"{shown}: not an option of {fmt} ({fmt} takes {takes})")
    intake = spec.scan(Path(root).expanduser().resolve(), **given)
    frame, notes = intake.frame, list(intake.notes)
    _refuse_duplicates(frame)
    frame, link_notes = _drop_missing_links(frame)
    frame, split_notes = assign_splits(frame, split, seed)
    return Intake(frame, notes + link_notes + split_notes)


def write_manifest(intake: Intake, out: str | Path) -> Path:
    """Write the manifest (`.csv` → CSV, else Parquet); paths relative to its folder when under it."""
    out = Path(out).expanduser().resolve()
    base = str(out.parent) + os.sep
    path = pl.col("path")
    frame = intake.frame.with_columns(
        pl.when(path.str.starts_with(base)).then(path.str.strip_prefix(base)).otherwise(path).alias("path")
    ).select(MANIFEST_COLUMNS)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial")
    if out.suffix.lower() == ".csv":
        frame.write_csv(staging)
    else:
        frame.write_parquet(staging)
    staging.replace(out)
    return out


def outside(intake: Intake, out: str | Path) -> bool:
    """Whether some video lies outside the manifest's folder (then `build` needs `--root`)."""
    base = str(Path(out).expanduser().resolve().parent) + os.sep
    return not intake.frame["path"].str.starts_with(base).all()


def _refuse_duplicates(frame: pl.DataFrame) -> None:
    clashes = (
        frame.group_by("video_id", maintain_order=True)
        .agg(pl.col("path"), pl.len().alias("n"))
        .filter(pl.col("n") > 1)
    )
    if len(clashes):
        shown = [
            f"{row['video_id']!r} ← {' and '.join(row['path'][:3])}" for row in clashes.head(5).to_dicts()
        ]
        raise ManifestError(
            f"{len(clashes)} duplicate video id(s): {'; '.join(shown)}"
            + (f"; … {len(clashes) - 5} more" if len(clashes) > 5 else "")
            + " — ids come from the dataset's file names, so the same name appears twice under ROOT"
            " (a copied part or folder?)"
        )


def _drop_missing_links(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """Sources/donors naming no video of the manifest become null, and are listed."""
    notes = []
    ids = frame["video_id"]
    for column, what in (("source", "source"), ("donor", "donor")):
        missing = frame["video_id"].filter(frame[column].is_not_null() & ~frame[column].is_in(ids.implode()))
        if len(missing):
            wanted = frame.filter(pl.col("video_id").is_in(missing.implode()))[column].unique(
                maintain_order=True
            )
            notes.append(
                f"{len(missing)} fake(s) whose {what} video is not under ROOT (kept, {column} left null): "
                f"{sample(missing.to_list())} (missing: {sample(wanted.to_list())})"
            )
            frame = frame.with_columns(
                pl.when(pl.col(column).is_in(ids.implode()))
                .then(pl.col(column))
                .otherwise(None)
                .alias(column)
            )
    return frame, notes
