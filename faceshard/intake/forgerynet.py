"""ForgeryNet: `video_list.txt` files, parsed as columns (221,247 lines in well under a second).

A line is space-separated with a varying number of fields:
`<n_segments> <video path> [<start> <length> <fake/real>]*n_segments <binary> <triple> <16-class>`.
Field 2 is the path under the release folder; the last non-empty field is the 16-class label (SPEC §9:
0 and 16–19 real, 1–8 the video methods). MINTIME trains on the Training list (carving its validation
split out of it) and tests on the Validation list, which is what the default list assignment does.
ForgeryNet names no source videos, so `source` stays null.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from faceshard.errors import ManifestError
from faceshard.intake.registry import STRATUM, Intake, conform, not_like, register_format, sample

REAL_CLASSES = (0, 16, 17, 18, 19)
DEFAULT_LISTS = (("Training/video_list.txt", "train"), ("Validation/video_list.txt", "test"))
# Where a list's paths are rooted, tried in order against the first rows: next to the list, the
# release's `video/` folder beside it, the dataset root.
_BASES = ("{list_dir}", "{list_dir}/video", "{root}")
_PROBE_ROWS = 20


@register_format("forgerynet", options=("lists",))
def scan(root: Path, lists: Sequence[str] | None = None) -> Intake:
    """ForgeryNet video_list.txt files (Training → train/val, Validation → test)."""
    chosen = [_parse_list_option(root, item) for item in lists] if lists else _default_lists(root)
    frames, notes = [], []
    for list_path, split in chosen:
        frame, list_notes = read_video_list(list_path, root, split)
        frames.append(frame)
        notes.extend(list_notes)
    return Intake(pl.concat(frames), notes)


def read_video_list(list_path: Path, root: Path, split: str | None) -> tuple[pl.DataFrame, list[str]]:
    """One video_list.txt → intake frame; bad lines are listed by number, never guessed."""
    lines = pl.Series("line", list_path.read_text(encoding="utf-8", errors="replace").splitlines())
    fields = (
        pl.DataFrame([lines])
        .with_row_index("number", offset=1)
        .filter(pl.col("line").str.strip_chars() != "")
        .select(
            "number",
            pl.col("line").str.split(" ").list.eval(pl.element().filter(pl.element() != "")).alias("fields"),
        )
        .select(
            "number",
            pl.col("fields").list.get(1, null_on_oob=True).alias("path"),
            pl.col("fields").list.last().cast(pl.Int32, strict=False).alias("klass"),
            pl.col("fields").list.len().alias("n_fields"),
            pl.col("fields").list.get(-3, null_on_oob=True).alias("binary"),
        )
    )
    bad = fields.filter(pl.col("path").is_null() | pl.col("klass").is_null() | (pl.col("n_fields") < 3))
    if len(bad):
        numbers = [str(n) for n in bad["number"].to_list()]
        raise ManifestError(
            f"{list_path}: {len(bad)} line(s) are not '<n> <video path> … <class>' "
            f"(class an integer): line {sample(numbers)}"
        )
    if not len(fields):
        raise ManifestError(f"{list_path}: no video lines in it")
    base = _video_base(list_path, root, fields["path"].head(_PROBE_ROWS).to_list())
    is_real = pl.col("klass").is_in(REAL_CLASSES)
    frame = fields.select(
        (pl.lit(str(base) + "/") + pl.col("path").str.strip_prefix("./")).alias("path"),
        pl.when(is_real).then(0).otherwise(1).cast(pl.Int8).alias("label"),
        pl.when(is_real).then(None).otherwise(pl.col("klass").cast(pl.String)).alias("method"),
        pl.lit(split, dtype=pl.String).alias("split"),
        pl.col("path").str.strip_prefix("./").alias("video_id"),
        pl.lit("forgerynet").alias("dataset"),
        pl.col("klass").cast(pl.String).alias(STRATUM),
    )
    notes = []
    # The binary field (when the line has one) must agree with the class; say so when it does not.
    disagree = fields.filter(
        (pl.col("n_fields") >= 5)
        & (pl.col("binary") != pl.when(is_real).then(pl.lit("0")).otherwise(pl.lit("1")))
    )
    if len(disagree):
        notes.append(
            f"{list_path}: {len(disagree)} line(s) whose binary label disagrees with the class "
            f"(label taken from the class): line {sample(str(n) for n in disagree['number'].to_list())}"
        )
    return conform(frame), notes


def _parse_list_option(root: Path, item: str) -> tuple[Path, str | None]:
    """`FILE` or `FILE=SPLIT`; FILE relative to ROOT unless absolute."""
    name, _, split = item.partition("=")
    path = Path(name) if Path(name).is_absolute() else root / name
    if not path.is_file():
        raise ManifestError(f"--list {item}: no such file {path}")
    return path, split or None


def _default_lists(root: Path) -> list[tuple[Path, str]]:
    found = [(root / name, split) for name, split in DEFAULT_LISTS if (root / name).is_file()]
    if not found:
        raise not_like(
            "forgerynet",
            root,
            f"{' and/or '.join(name for name, _ in DEFAULT_LISTS)} (or name lists with --list FILE[=SPLIT])",
        )
    return found


def _video_base(list_path: Path, root: Path, probe: list[str]) -> Path:
    """The folder the list's paths are relative to: the first candidate holding any probed video."""
    candidates = [Path(b.format(list_dir=list_path.parent, root=root)) for b in _BASES]
    for base in candidates:
        if any((base / p.removeprefix("./")).is_file() for p in probe):
            return base
    raise ManifestError(
        f"{list_path}: none of its first {len(probe)} videos (e.g. {probe[0] if probe else '?'}) "
        f"exists under {' or '.join(str(c) for c in candidates)}: expected the release's video "
        "folder next to the list"
    )
