"""tasks/size.py: SPEC §4 buckets and ratios on worked examples and edges."""

from __future__ import annotations

import numpy as np
import pytest

from faceshard.records import Face
from faceshard.tasks.size import SizeStage, area_ratio, size_bucket


@pytest.mark.parametrize(
    ("ratio", "bucket"),
    [
        (0, 1),
        (1, 1),
        (5, 1),
        (6, 2),
        (10, 2),
        (11, 3),
        (15, 3),
        (16, 4),
        (51, 11),
        (95, 19),
        (96, 20),
        (100, 20),
    ],
)
def test_size_bucket_worked_examples(ratio: int, bucket: int) -> None:
    assert size_bucket(ratio) == bucket


def test_size_bucket_covers_every_percentage_with_twenty_ranges() -> None:
    buckets = [size_bucket(r) for r in range(101)]
    assert buckets == sorted(buckets) and set(buckets) == set(range(1, 21))
    assert size_bucket(np.int64(37)) == 8  # numpy integers from arrays are fine


@pytest.mark.parametrize("bad", [-1, 101, 250, 5.5, "7", True])
def test_size_bucket_refuses_values_outside_0_to_100(bad: object) -> None:
    with pytest.raises(ValueError):
        size_bucket(bad)  # type: ignore[arg-type]


def test_area_ratio_truncates_like_mintime() -> None:
    assert area_ratio(150, 150, 640, 480) == 7  # 100·22500/307200 = 7.32
    assert area_ratio(480, 640, 640, 480) == 100
    assert area_ratio(10, 10, 1920, 1080) == 0
    assert area_ratio(99, 100, 100, 100) == 99  # 99.0, never rounded up
    with pytest.raises(ValueError):
        area_ratio(10, 10, 0, 480)


def face(crop_h: int, crop_w: int, frame_w: int, frame_h: int) -> Face:
    return Face(
        frame=0,
        face=0,
        box=np.zeros(4, np.float32),
        score=1.0,
        frame_width=frame_w,
        frame_height=frame_h,
        crop=np.zeros((crop_h, crop_w, 3), np.uint8),
    )


def test_size_stage_uses_the_native_crop_and_original_frame() -> None:
    faces = SizeStage()([face(150, 150, 640, 480), face(432, 432, 1280, 720), face(256, 256, 200, 200)])
    assert [(f.area_ratio, f.size_bucket) for f in faces] == [(7, 2), (20, 4), (100, 20)]
