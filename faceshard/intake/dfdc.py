"""DFDC: every `metadata.json` under ROOT (one per part), `{"x.mp4": {"label", "split", "original"}}`,
and the test set's `labels.csv` (`filename,label`, 1 = fake) in a folder without a metadata.json.

Video ids are the file stems (DFDC's names are unique across parts; a clash is reported, not
guessed); a fake's source is the stem of its `original`. DFDC names no method, so `method` is null.
The test set's videos take split `test` (DeepfakeBench's rearrange.py:376-390 reads `test/labels.csv`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from faceshard.errors import ManifestError
from faceshard.intake.registry import Intake, make_frame, not_like, register_format, sample

LABELS = {"REAL": 0, "FAKE": 1}


@register_format("dfdc")
def scan(root: Path) -> Intake:
    """DFDC parts: every metadata.json under ROOT."""
    metadata_files = sorted(root.rglob("metadata.json")) if root.is_dir() else []
    label_files = sorted(
        p
        for p in (root.rglob("labels.csv") if root.is_dir() else [])
        if not (p.parent / "metadata.json").is_file()
    )
    if not metadata_files and not label_files:
        raise not_like(
            "dfdc",
            root,
            "metadata.json files (one per dfdc_train_part_N/) or the test set's labels.csv under ROOT",
        )
    rows: dict[str, list] = {k: [] for k in ("path", "label", "split", "video_id", "source", "stratum")}
    absent: list[str] = []
    for metadata in metadata_files:
        try:
            entries = json.loads(metadata.read_text())
        except ValueError as exc:
            raise ManifestError(f"{metadata}: not JSON: {exc}") from None
        if not isinstance(entries, dict):
            raise ManifestError(f'{metadata}: expected an object {{"x.mp4": {{"label": …}}}}')
        on_disk = {p.name for p in metadata.parent.iterdir()}
        bad = [name for name, e in entries.items() if not isinstance(e, dict) or e.get("label") not in LABELS]
        if bad:
            raise ManifestError(f"{metadata}: label must be REAL or FAKE for: {sample(bad)}")
        for name, entry in entries.items():
            if name not in on_disk:
                absent.append(str(metadata.parent / name))
            original = entry.get("original")
            rows["path"].append(str(metadata.parent / name))
            rows["label"].append(LABELS[entry["label"]])
            rows["split"].append(entry.get("split"))
            rows["video_id"].append(Path(name).stem)
            rows["source"].append(Path(original).stem if original else None)
            rows["stratum"].append(entry["label"])
    for labels in label_files:
        _test_set(labels, rows, absent)
    notes = []
    if absent:
        notes.append(
            f"{len(absent)} video(s) named in metadata.json but not on disk (kept: the build records "
            f"each as an error row): {sample(absent)}"
        )
    return Intake(make_frame({**rows, "dataset": ["dfdc"] * len(rows["path"])}), notes)


def _test_set(labels: Path, rows: dict[str, list], absent: list[str]) -> None:
    """`filename,label` rows (label 0 = real, 1 = fake): the test split."""
    with labels.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"filename", "label"} <= set(reader.fieldnames or ()):
            raise ManifestError(f"{labels}: expected the columns filename,label (1 = fake)")
        entries = list(reader)
    bad = [e["filename"] for e in entries if e["label"].strip() not in ("0", "1")]
    if bad:
        raise ManifestError(f"{labels}: label must be 0 (real) or 1 (fake) for: {sample(bad)}")
    on_disk = {p.name for p in labels.parent.rglob("*.mp4")}
    for entry in entries:
        name = entry["filename"].strip()
        if name not in on_disk:
            absent.append(str(labels.parent / name))
        label = int(entry["label"])
        rows["path"].append(str(next(labels.parent.rglob(name), labels.parent / name)))
        rows["label"].append(label)
        rows["split"].append("test")
        rows["video_id"].append(Path(name).stem)
        rows["source"].append(None)
        rows["stratum"].append("FAKE" if label else "REAL")
