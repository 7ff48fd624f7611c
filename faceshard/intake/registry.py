"""The format registry and the one record every format returns: an `Intake` (a columnar frame + notes).

Each dataset layout is one small module that registers a `Format` under its CLI name (timm style):
`@register_format("ffpp", options=("compression", "splits"))`. The registry knows which options a
format takes, so a user who passes `--compression` to `celebdf` hears so instead of being ignored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from faceshard.errors import ManifestError

# What `faceshard manifest` writes, in this order (SPEC §9). `donor` (the donor video of a face swap,
# where the dataset names one: FF++ 000_003 → 003) rides along so the leakage rule can be re-checked.
MANIFEST_COLUMNS = ("path", "label", "method", "split", "video_id", "source", "dataset", "donor")
# Internal: the class MINTIME stratifies the validation draw by (ForgeryNet's 16-class label, the
# method, or the real folder), dropped before writing.
STRATUM = "stratum"
FRAME_SCHEMA = {
    "path": pl.String,
    "label": pl.Int8,
    "method": pl.String,
    "split": pl.String,  # the dataset's own split; null where it has none
    "video_id": pl.String,
    "source": pl.String,
    "dataset": pl.String,
    "donor": pl.String,
    STRATUM: pl.String,
}


@dataclass
class Intake:
    """A dataset as found on disk: one row per video, plus what the user should know about it."""

    frame: pl.DataFrame
    notes: list[str] = field(default_factory=list)


Scanner = Callable[..., Intake]


@dataclass(frozen=True)
class Format:
    """A registered dataset layout: its scanner and the CLI options it understands."""

    name: str
    scan: Scanner
    options: tuple[str, ...]


FORMATS: dict[str, Format] = {}


def register_format(name: str, options: Sequence[str] = ()) -> Callable[[Scanner], Scanner]:
    """Decorator: register `scan(root: Path, **options) -> Intake` as the format `name`."""

    def add(scan: Scanner) -> Scanner:
        if name in FORMATS:
            raise ValueError(f"intake format {name!r} registered twice")
        FORMATS[name] = Format(name=name, scan=scan, options=tuple(options))
        return scan

    return add


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise ManifestError(f"unknown format {name!r}; one of: {', '.join(sorted(FORMATS))}") from None


def make_frame(rows: dict[str, list[Any]]) -> pl.DataFrame:
    """Columns (lists of equal length) → the intake frame, missing columns null, types fixed."""
    height = len(next(iter(rows.values()))) if rows else 0
    return pl.DataFrame({name: rows.get(name, [None] * height) for name in FRAME_SCHEMA}, schema=FRAME_SCHEMA)


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """Any frame with some of the intake columns → exactly the intake columns, missing ones null."""
    return frame.select(
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in FRAME_SCHEMA.items()
    )


def not_like(fmt: str, root: Path, expected: str) -> ManifestError:
    """ROOT is not laid out as `fmt`: say what was expected and what is there."""
    return ManifestError(
        f"{root} does not match the {fmt} layout: expected {expected}; found {_listing(root)}"
    )


def _listing(root: Path, limit: int = 12) -> str:
    if not root.exists():
        return "no such directory"
    if not root.is_dir():
        return "a file, not a directory"
    names = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in os.scandir(root))
    if not names:
        return "an empty directory"
    more = f", … {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def sample(items: Iterable[str], limit: int = 5) -> str:
    """`a, b, c, … 12 more`: enough of a list for the user to find the rest."""
    items = list(items)
    more = f", … {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
