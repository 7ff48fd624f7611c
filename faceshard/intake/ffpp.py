"""FaceForensics++: originals and manipulations per compression, official pair lists as splits.

Layout: `original_sequences/{youtube,actors}/<c>/videos/*.mp4` and
`manipulated_sequences/<Method>/<c>/videos/*.mp4` (c0 ships as `raw`). A fake `000_003.mp4` shows
original 000's footage with 003's face: source 000, donor 003. DeepFakeDetection fakes
`01_02__scene__XXXXXXXX.mp4` show actor 01's `01__scene.mp4` with actor 02's face: source
`01__scene`, donor unknown (an actor, not a video). Official `train/val/test.json` hold pairs
`[["071", "054"], …]`: both originals and every fake of the pair (071_054, 054_071) go to that split.
Deepfakes, Face2Face, FaceSwap, NeuralTextures and DeepFakeDetection ship manipulation masks as videos,
`manipulated_sequences/<Method>/masks/videos/<fake stem>.mp4`, frame for frame with the fake: the
scan reports how many fakes have one, and `faceshard export` crops them (`mask_videos`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl

from faceshard.errors import ManifestError
from faceshard.intake.registry import Intake, make_frame, not_like, register_format, sample

COMPRESSIONS = {"c0": ("raw", "c0"), "raw": ("raw", "c0"), "c23": ("c23",), "c40": ("c40",)}
SPLIT_FILES = ("train", "val", "test")
_PAIR_FAKE = re.compile(r"^(\d+)_(\d+)$")
_ACTOR_FAKE = re.compile(r"^(\d+)_\d+__(.+)__[0-9A-Za-z]+$")
# DeepfakeBench preprocessing/preprocess.py:449-451: the methods whose `masks/` it crops (not FaceShifter).
MASK_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "DeepFakeDetection")


@register_format("ffpp", options=("compression", "splits"))
def scan(root: Path, compression: str = "c23", splits: Path | None = None) -> Intake:
    """FaceForensics++ original_sequences/ + manipulated_sequences/, official pair splits."""
    if compression not in COMPRESSIONS:
        raise ManifestError(f"--compression {compression!r}: one of {', '.join(COMPRESSIONS)}")
    if not (root / "original_sequences").is_dir() and not (root / "manipulated_sequences").is_dir():
        raise not_like("ffpp", root, "original_sequences/ and manipulated_sequences/")
    rows: dict[str, list] = {
        k: [] for k in ("path", "label", "method", "video_id", "source", "donor", "stratum")
    }
    notes: list[str] = []
    for kind_dir in _subdirs(root / "original_sequences"):
        for video in _videos(kind_dir, compression):
            _add(rows, video, 0, None, video.stem, None, None, f"original/{kind_dir.name}")
    unparsed = []
    for method_dir in _subdirs(root / "manipulated_sequences"):
        method = method_dir.name
        for video in _videos(method_dir, compression):
            source, donor = _links(video.stem)
            if source is None:
                unparsed.append(f"{method}/{video.name}")
            _add(rows, video, 1, method, f"{method}/{video.stem}", source, donor, method)
    if not rows["path"]:
        present = sorted({p.parent.name for p in root.glob("*_sequences/*/*/videos")})
        raise not_like(
            "ffpp",
            root,
            f"videos in {{original,manipulated}}_sequences/*/{'|'.join(COMPRESSIONS[compression])}/videos/*.mp4 "
            f"(compressions present: {', '.join(present) or 'none'}; choose one with --compression)",
        )
    notes.extend(_mask_notes(rows))
    if unparsed:
        notes.append(
            f"{len(unparsed)} fake(s) named neither NNN_MMM nor AA_BB__scene__ID: source unknown: {sample(unparsed)}"
        )
    frame = make_frame({**rows, "dataset": ["ffpp"] * len(rows["path"])})
    split_dir = splits if splits is not None else _default_split_dir(root)
    if split_dir is not None:
        frame, split_notes = _official_splits(frame, split_dir)
        notes.extend(split_notes)
    return Intake(frame, notes)


def method_folder(video: str | Path) -> Path | None:
    """`…/manipulated_sequences/<Method>` of an FF++ fake whose method ships masks, else None."""
    parts = Path(video).parts
    if "manipulated_sequences" not in parts:
        return None
    at = parts.index("manipulated_sequences") + 1
    if at >= len(parts) - 1 or parts[at] not in MASK_METHODS:
        return None
    return Path(*parts[: at + 1])


def mask_videos(method: Path) -> dict[str, Path]:
    """{fake stem: mask video} under `<Method>/masks/`, found as DeepfakeBench finds them.

    preprocess.py:364 lists `masks/**/*.mp4` sorted, and 385 takes the first whose stem is the
    video's; FF++ ships them as `masks/videos/<stem>.mp4`.
    """
    found: dict[str, Path] = {}
    folder = method / "masks"
    for path in sorted(folder.rglob("*.mp4")) if folder.is_dir() else []:
        found.setdefault(path.stem, path)
    return found


def _mask_notes(rows: dict[str, list]) -> list[str]:
    """How many fakes of each masked method have a mask video (the export writes their `masks/`)."""
    counts: dict[str, list[int]] = {}
    listed: dict[Path, dict[str, Path]] = {}
    for path, method in zip(rows["path"], rows["method"], strict=True):
        folder = method_folder(path) if method else None
        if folder is None:
            continue
        masks = listed.setdefault(folder, mask_videos(folder))
        count = counts.setdefault(method, [0, 0])
        count[0] += Path(path).stem in masks
        count[1] += 1
    if not any(have for have, _ in counts.values()):
        return []
    shown = ", ".join(f"{method} {have}/{total}" for method, (have, total) in sorted(counts.items()))
    return [f"manipulation mask videos (<Method>/masks/): {shown}; `faceshard export` crops them into masks/"]


def _links(stem: str) -> tuple[str | None, str | None]:
    """(source video_id, donor video_id) from a fake's file name."""
    if match := _PAIR_FAKE.match(stem):
        return match.group(1), match.group(2)
    if match := _ACTOR_FAKE.match(stem):
        return f"{match.group(1)}__{match.group(2)}", None
    return None, None


def _add(
    rows: dict[str, list],
    path: Path,
    label: int,
    method: str | None,
    video_id: str,
    source: str | None,
    donor: str | None,
    stratum: str,
) -> None:
    for key, value in (
        ("path", str(path)),
        ("label", label),
        ("method", method),
        ("video_id", video_id),
        ("source", source),
        ("donor", donor),
        ("stratum", stratum),
    ):
        rows[key].append(value)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _videos(kind_dir: Path, compression: str) -> list[Path]:
    for name in COMPRESSIONS[compression]:
        folder = kind_dir / name / "videos"
        if folder.is_dir():
            return sorted(folder.glob("*.mp4"))
    return []


def _default_split_dir(root: Path) -> Path | None:
    for folder in (root / "splits", root):
        if all((folder / f"{name}.json").is_file() for name in SPLIT_FILES):
            return folder
    return None


def _official_splits(frame: pl.DataFrame, split_dir: Path) -> tuple[pl.DataFrame, list[str]]:
    """Each pair's originals and all their fakes take the pair's split; the rest stay unassigned."""
    split_of: dict[str, str] = {}
    for name in SPLIT_FILES:
        path = split_dir / f"{name}.json"
        if not path.is_file():
            raise ManifestError(f"--splits {split_dir}: missing {name}.json (expected train/val/test.json)")
        try:
            pairs = json.loads(path.read_text())
            members = [str(v) for pair in pairs for v in pair]
        except (ValueError, TypeError) as exc:
            raise ManifestError(f'{path}: not a list of pairs like [["071", "054"], …]: {exc}') from None
        clash = [v for v in members if split_of.get(v, name) != name]
        if clash:
            raise ManifestError(f"{path}: video(s) already in another split's list: {sample(clash)}")
        split_of.update(dict.fromkeys(members, name))
    key = pl.when(pl.col("label") == 0).then(pl.col("video_id")).otherwise(pl.col("source"))
    frame = frame.with_columns(
        key.replace_strict(split_of, default=None, return_dtype=pl.String).alias("split")
    )
    unlisted = frame.filter(pl.col("split").is_null())
    notes = []
    if len(unlisted):
        notes.append(
            f"{len(unlisted)} video(s) in no official list (actors, DeepFakeDetection, unlisted ids): "
            f"split left to the split rule: {sample(unlisted['video_id'].to_list())}"
        )
    return frame, notes
