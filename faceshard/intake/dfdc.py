"""DFDC: every `metadata.json` under ROOT (one per part), `{"x.mp4": {"label", "split", "original"}}`.

Video ids are the file stems (DFDC's names are unique across parts; a clash is reported, not
guessed); a fake's source is the stem of its `original`. DFDC names no method, so `method` is null.
"""

from __future__ import annotations

import json
from pathlib import Path

from faceshard.errors import ManifestError
from faceshard.intake.registry import Intake, make_frame, not_like, register_format, sample

LABELS = {"REAL": 0, "FAKE": 1}


@register_format("dfdc")
def scan(root: Path) -> Intake:
    """DFDC parts: every metadata.json under ROOT."""
    metadata_files = sorted(root.rglob("metadata.json")) if root.is_dir() else []
    if not metadata_files:
        raise not_like("dfdc", root, "metadata.json files (one per dfdc_train_part_N/) under ROOT")
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
    notes = []
    if absent:
        notes.append(
            f"{len(absent)} video(s) named in metadata.json but not on disk (kept: the build records "
            f"each as an error row): {sample(absent)}"
        )
    return Intake(make_frame({**rows, "dataset": ["dfdc"] * len(rows["path"])}), notes)
