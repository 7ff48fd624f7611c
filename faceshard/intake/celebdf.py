"""Celeb-DF v2: `Celeb-real/`, `YouTube-real/`, `Celeb-synthesis/`, `List_of_testing_videos.txt`.

Labels come from the folder (the test list's own digit means real = 1, the opposite of ours). The list
is the official test split; every other video is training. A fake `id0_id1_0000.mp4` is real video
`id0_0000` with identity id1's face: source `id0_0000`. The donor is a person, not a video, so `donor`
stays null (linking by person would put every Celeb-DF video into one group: the official test list
itself spans all 59 identities).
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from faceshard.intake.registry import Intake, make_frame, not_like, register_format, sample

FOLDERS = {"Celeb-real": 0, "YouTube-real": 0, "Celeb-synthesis": 1}
TEST_LIST = "List_of_testing_videos.txt"
_FAKE = re.compile(r"^(id\d+)_id\d+_(\d+)$")


@register_format("celebdf")
def scan(root: Path) -> Intake:
    """Celeb-DF v2 folders; List_of_testing_videos.txt is the test split."""
    present = [name for name in FOLDERS if (root / name).is_dir()]
    if not present:
        raise not_like("celebdf", root, f"folders {', '.join(FOLDERS)} (and {TEST_LIST})")
    notes = []
    if missing := [name for name in FOLDERS if name not in present]:
        notes.append(f"no {', '.join(missing)} folder under {root}: those videos are absent")
    rows: dict[str, list] = {
        k: [] for k in ("path", "label", "method", "video_id", "source", "stratum", "key")
    }
    unparsed = []
    for folder in present:
        label = FOLDERS[folder]
        for video in sorted((root / folder).rglob("*.mp4")):
            source = None
            if label == 1:
                match = _FAKE.match(video.stem)
                source = f"{match.group(1)}_{match.group(2)}" if match else None
                if match is None:
                    unparsed.append(video.name)
            rows["path"].append(str(video))
            rows["label"].append(label)
            rows["method"].append(folder if label else None)
            rows["video_id"].append(video.stem)
            rows["source"].append(source)
            rows["stratum"].append(folder)
            rows["key"].append(f"{folder}/{video.name}")
    if unparsed:
        notes.append(f"{len(unparsed)} fake(s) not named idA_idB_NNNN: source unknown: {sample(unparsed)}")
    keys = rows.pop("key")
    frame = make_frame({**rows, "dataset": ["celebdf"] * len(keys)})
    test_list = root / TEST_LIST
    if not test_list.is_file():
        notes.append(f"no {TEST_LIST} under {root}: no official test split")
        return Intake(frame, notes)
    listed = _read_test_list(test_list)
    frame = frame.with_columns(
        pl.Series("key", keys)
        .is_in(list(listed))
        .replace_strict({True: "test", False: "train"})
        .alias("split")
    )
    known = set(keys)
    if absent := sorted(k for k in listed if k not in known):
        notes.append(f"{TEST_LIST}: {len(absent)} listed video(s) not on disk: {sample(absent)}")
    by_key = dict(zip(keys, rows["label"], strict=True))
    if wrong := sorted(k for k, digit in listed.items() if k in by_key and digit != 1 - by_key[k]):
        notes.append(
            f"{TEST_LIST}: {len(wrong)} line(s) whose digit (1 = real in this list) disagrees with the "
            f"folder; label taken from the folder: {sample(wrong)}"
        )
    return Intake(frame, notes)


def _read_test_list(path: Path) -> dict[str, int | None]:
    """`1 YouTube-real/00170.mp4` lines → {relative path: digit}."""
    listed: dict[str, int | None] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            listed[parts[-1].replace("\\", "/")] = int(parts[0]) if parts[0].isdigit() else None
    return listed
