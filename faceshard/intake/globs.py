"""Any folder of videos: a glob pattern and a label rule (a folder name → label, or one constant).

`--label-from-dir real=0,fake=1` labels `ROOT/fake/x/y.mp4` as 1: the first folder of the path (from
ROOT) named in the rule decides. Video ids are paths relative to ROOT.
"""

from __future__ import annotations

from pathlib import Path

from faceshard.errors import ManifestError
from faceshard.intake.registry import Intake, make_frame, register_format, sample

LABEL_WORDS = {"0": 0, "1": 1, "real": 0, "fake": 1}


@register_format("glob", options=("pattern", "label", "label_from_dir", "dataset"))
def scan(
    root: Path,
    pattern: str = "**/*.mp4",
    label: str | None = None,
    label_from_dir: str | None = None,
    dataset: str | None = None,
) -> Intake:
    """Files matching a pattern under ROOT, labelled by folder or by a constant."""
    if (label is None) == (label_from_dir is None):
        raise ManifestError(
            "glob needs exactly one label rule: --label-from-dir real=0,fake=1 or --label 0|1"
        )
    if not root.is_dir():
        raise ManifestError(f"{root}: not a directory")
    rule = parse_label_rule(label_from_dir) if label_from_dir else None
    constant = _label_word(label, "--label") if label is not None else None
    videos = sorted(p for p in root.glob(pattern) if p.is_file())
    if not videos:
        raise ManifestError(f"{root}: pattern {pattern!r} matches no file")
    rows: dict[str, list] = {k: [] for k in ("path", "label", "video_id", "stratum")}
    unlabelled = []
    for video in videos:
        relative = video.relative_to(root)
        value = constant
        if rule is not None:
            value = next((rule[part] for part in relative.parts[:-1] if part in rule), None)
            if value is None:
                unlabelled.append(relative.as_posix())
                continue
        rows["path"].append(str(video))
        rows["label"].append(value)
        rows["video_id"].append(relative.as_posix())
        rows["stratum"].append(str(value))
    if unlabelled:
        raise ManifestError(
            f"{len(unlabelled)} file(s) under no folder named in --label-from-dir "
            f"({', '.join(rule or {})}): {sample(unlabelled)}; narrow --pattern or extend the rule"
        )
    name = dataset or root.resolve().name
    return Intake(make_frame({**rows, "dataset": [name] * len(rows["path"])}))


def parse_label_rule(text: str) -> dict[str, int]:
    """`real=0,fake=1` → {"real": 0, "fake": 1}."""
    rule = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        folder, sep, value = item.partition("=")
        if not sep or not folder:
            raise ManifestError(f"--label-from-dir {text!r}: expected FOLDER=LABEL pairs like real=0,fake=1")
        rule[folder] = _label_word(value, f"--label-from-dir {item}")
    if not rule:
        raise ManifestError(f"--label-from-dir {text!r}: expected FOLDER=LABEL pairs like real=0,fake=1")
    return rule


def _label_word(value: str, where: str) -> int:
    try:
        return LABEL_WORDS[value.strip().lower()]
    except KeyError:
        raise ManifestError(f"{where}: label must be 0/1 or real/fake, got {value!r}") from None
