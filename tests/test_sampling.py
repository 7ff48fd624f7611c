"""Frame selectors driven through the real decoder (tasks/decode.py) with detector feedback."""

from __future__ import annotations

import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import skimage.data
from clips import write_video

from faceshard.config import DetectConfig
from faceshard.errors import VideoError
from faceshard.models.detectors import build_detector
from faceshard.records import VideoInfo
from faceshard.tasks.decode import iter_frames, probe
from faceshard.tasks.sampling import (
    DEFAULT_FALLBACK_FRAMES,
    STRATEGIES,
    FrameSelector,
    fallback_offsets,
    make_selector,
)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 frames at 10 fps (content is irrelevant here: feedback is scripted)."""
    base = cv2.resize(skimage.data.astronaut(), (64, 64))
    frames = [np.roll(base, i, axis=0) for i in range(50)]
    return write_video(tmp_path_factory.mktemp("sampling") / "clip.mp4", frames)


def drive(selector: FrameSelector, path: Path, info: VideoInfo, has_face: Callable[[int], bool]) -> list[int]:
    """The pipeline's loop: feedback after each frame when the selector needs it. Returns yielded indices."""
    selector.start(info, path)
    yielded = []
    frames = iter_frames(
        path, info, selector.want, lambda: selector.done, queue_size=4, feedback=selector.needs_feedback
    )
    for frame in frames:
        yielded.append(frame.index)
        if selector.needs_feedback:
            time.sleep(0.001)  # a detector is slower than the decoder: the decode thread runs ahead
            selector.found(frame.index, int(has_face(frame.index)))
    return yielded


def accepted(selector: FrameSelector, n: int) -> list[int]:
    return [i for i in range(n) if selector.accepted(i)]


def test_per_second_exhaustive_fallback_is_mintimes_search(clip: Path) -> None:
    faces = {0, 12, 13, 30, 31, 40}  # second 1 finds a face at 12; second 2 has none
    info = probe(clip)
    selector = make_selector("per_second", fallback=None)
    assert selector.needs_feedback and not selector.sequential
    yielded = drive(selector, clip, info, faces.__contains__)
    assert yielded == [0, 10, 11, 12, *range(20, 30), 30, 40]
    assert accepted(selector, 50) == [0, 12, 30, 40]


def test_per_second_fallback_is_bounded_and_evenly_spaced(clip: Path) -> None:
    """Default: 2 further tries at 1/3 and 2/3 of the second (offsets 3 and 7 at 10 fps)."""
    faces = {0, 12, 13, 17, 30, 31, 40}
    info = probe(clip)
    selector = make_selector("per_second")
    yielded = drive(selector, clip, info, faces.__contains__)
    assert yielded == [0, 10, 13, 20, 23, 27, 30, 40]  # a face-less second costs 3 detections, not 10
    assert accepted(selector, 50) == [0, 13, 30, 40]
    assert fallback_offsets(25, DEFAULT_FALLBACK_FRAMES) == (0, 8, 17)
    assert fallback_offsets(25, 0) == (0,) and fallback_offsets(3, 5) == (0, 1, 2)


def test_per_second_fallback_frames_wait_for_their_seconds_first_frame() -> None:
    """`ready` lets the pipeline batch first frames of many seconds and fall back only where empty."""
    selector = make_selector("per_second", fallback=2)
    selector.start(VideoInfo(fps=10, width=1, height=1, n_frames_container=None))
    assert selector.ready(0) and selector.ready(10) and selector.ready(20)
    assert selector.want(3) and not selector.ready(3) and not selector.ready(7)
    selector.found(0, 0)
    selector.found(10, 1)
    selector.found(20, 0)
    assert selector.ready(3) and not selector.ready(7)  # the second try waits for the first
    assert not selector.want(13)  # second 1 found its face on its first frame
    selector.found(23, 0)
    assert selector.ready(27) and not selector.want(5)


def test_per_second_uses_int_of_reported_fps() -> None:
    selector = make_selector("per_second")
    selector.start(VideoInfo(fps=29.97, width=1, height=1, n_frames_container=None))
    selector.found(0, 1)
    assert not selector.want(28)  # still second 0 (fps 29)
    assert selector.want(29)


def test_per_second_max_frames_stops_decoding(clip: Path) -> None:
    info = probe(clip)
    selector = make_selector("per_second", max_frames=2)
    yielded = drive(selector, clip, info, lambda i: i in {0, 13})
    assert yielded == [0, 10, 13]
    assert accepted(selector, 50) == [0, 13]
    assert selector.done and info.n_frames_decoded < 50


def test_per_second_want_only_narrows_with_feedback() -> None:
    """What the decode thread asks ahead of feedback is a superset of the final answer."""
    selector = make_selector("per_second")
    selector.start(VideoInfo(fps=10, width=1, height=1, n_frames_container=None))
    assert selector.want(0) and selector.want(3) and selector.want(7) and not selector.want(5)
    selector.found(0, 2)
    assert not selector.want(3) and not selector.want(7) and selector.want(10)


def test_uniform_uses_decoded_count_not_the_header(clip: Path) -> None:
    info = probe(clip)
    info.n_frames_container = 500  # a wrong header
    selector = make_selector("uniform:8")
    assert not selector.needs_feedback
    assert drive(selector, clip, info, lambda i: True) == [0, 7, 14, 21, 28, 35, 42, 49]
    assert accepted(selector, 50) == [0, 7, 14, 21, 28, 35, 42, 49]
    assert info.n_frames_decoded == 50


def test_uniform_max_frames_stops_after_the_last_planned_frame(clip: Path) -> None:
    info = probe(clip)
    selector = make_selector("uniform:8", max_frames=3)
    assert drive(selector, clip, info, lambda i: True) == [0, 7, 14]
    assert selector.done and info.n_frames_decoded <= 16


def test_uniform_without_path_and_more_samples_than_frames() -> None:
    selector = make_selector("uniform:32")
    selector.start(VideoInfo(fps=10, width=1, height=1, n_frames_container=5))
    assert [i for i in range(10) if selector.want(i)] == [0, 1, 2, 3, 4]


def test_stride_and_all_with_cap(clip: Path) -> None:
    info = probe(clip)
    assert drive(make_selector("stride:7"), clip, info, lambda i: True) == [0, 7, 14, 21, 28, 35, 42, 49]
    assert drive(make_selector("stride:7", max_frames=3), clip, info, lambda i: True) == [0, 7, 14]
    assert drive(make_selector("all", max_frames=4), clip, info, lambda i: True) == [0, 1, 2, 3]
    assert info.n_frames_decoded == 5  # stopped right after the last wanted frame
    assert len(drive(make_selector("all"), clip, info, lambda i: True)) == 50


def test_consecutive_restarts_on_a_faceless_frame(clip: Path) -> None:
    info = probe(clip)
    selector = make_selector("consecutive:4")
    assert selector.needs_feedback
    yielded = drive(selector, clip, info, lambda i: i not in {2, 9})
    assert accepted(selector, 50) == [3, 4, 5, 6]
    assert yielded == list(range(7))
    assert selector.done and info.n_frames_decoded < 50


def test_consecutive_short_video_keeps_the_longest_run(clip: Path) -> None:
    info = probe(clip)
    selector = make_selector("consecutive:20")
    drive(selector, clip, info, lambda i: i in {1, 2, 3, 10, 11, 12, 30, 31})
    assert not selector.done
    assert accepted(selector, 50) == [1, 2, 3]  # earliest of the longest runs


def test_consecutive_acceptance_moves_to_a_longer_run_but_per_second_stays() -> None:
    info = VideoInfo(fps=10, width=1, height=1, n_frames_container=None)
    consecutive, per_second = make_selector("consecutive:5"), make_selector("per_second")
    consecutive.start(info)
    per_second.start(info)
    for i, faces in enumerate([1, 1, 0, 1, 1, 1]):
        consecutive.found(i, faces)
        per_second.found(i, faces)
        if i == 1:
            assert accepted(consecutive, 6) == [0, 1] and accepted(per_second, 6) == [0]
    assert accepted(consecutive, 6) == [3, 4, 5] and not consecutive.final_when_accepted
    assert accepted(per_second, 6) == [0] and per_second.final_when_accepted


def test_consecutive_max_frames_caps_the_run() -> None:
    selector = make_selector("consecutive:20", max_frames=2)
    selector.start(VideoInfo(fps=10, width=1, height=1, n_frames_container=None))
    for i in range(3):
        selector.found(i, 1)
    assert selector.done and accepted(selector, 5) == [0, 1]


def test_start_resets_between_videos() -> None:
    selector = make_selector("per_second")
    info = VideoInfo(fps=10, width=1, height=1, n_frames_container=None)
    selector.start(info)
    selector.found(0, 1)
    selector.start(info)
    assert not selector.accepted(0) and selector.want(3)


@pytest.mark.parametrize("bad", ["bogus", "uniform", "uniform:0", "stride:x", "all:3", "consecutive:-1"])
def test_bad_strategies_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        make_selector(bad)


def test_registry_covers_the_config_strategies() -> None:
    assert set(STRATEGIES) == {"all", "per_second", "uniform", "stride", "consecutive", "leading"}


@pytest.mark.parametrize(
    ("fallback", "tried"),
    [(None, {0: False, 1: False, 2: False, 3: True, 10: True}), (2, {0: False, 3: True, 10: True})],
)
def test_per_second_with_a_real_detector(tmp_path: Path, fallback: int | None, tried: dict) -> None:
    """Faceless opening frames: the second's sample is the first frame dlib finds a face on."""
    face = cv2.resize(skimage.data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    no_face = cv2.resize(skimage.data.coffee(), (256, 256), interpolation=cv2.INTER_AREA)
    frames = [no_face] * 3 + [face] * 8 + [no_face] * 2 + [face] * 2  # 15 frames at 10 fps
    path = write_video(tmp_path / "mixed.mp4", frames)
    detector = build_detector(DetectConfig(backend="dlib", upsample=1), "cpu")
    info = probe(path)
    selector = make_selector("per_second", fallback=fallback)
    selector.start(info, path)
    found = {}
    for frame in iter_frames(path, info, selector.want, lambda: selector.done, feedback=True):
        found[frame.index] = len(detector([frame.rgb])[0])
        selector.found(frame.index, found[frame.index])
    assert {i: n > 0 for i, n in found.items()} == tried
    assert accepted(selector, 15) == [3, 10]


def cv2_decoded_count(path: Path) -> int:
    """The oracle: frames OpenCV decodes reading the whole video."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


@pytest.fixture(scope="module")
def hundred(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 frames at 10 fps whose header says nothing false."""
    base = cv2.resize(skimage.data.astronaut(), (64, 64))
    return write_video(
        tmp_path_factory.mktemp("hundred") / "hundred.mp4", [np.roll(base, i, 0) for i in range(100)]
    )


@pytest.mark.parametrize(
    ("strategy", "max_frames", "kept"),
    [
        ("consecutive:20", None, list(range(20))),
        ("per_second", 2, [0, 10]),
        ("uniform:4", None, [0, 33, 66, 99]),
    ],
)
def test_n_frames_counts_the_whole_stream_when_decoding_stops_early(
    hundred: Path, strategy: str, max_frames: int | None, kept: list[int]
) -> None:
    """Issue #12: consecutive:20 wrote 29 and per_second with max_frames=2 wrote 35 for 100 frames."""
    info = probe(hundred)
    selector = make_selector(strategy, max_frames)
    drive(selector, hundred, info, lambda i: True)
    assert accepted(selector, 100) == kept
    assert info.n_frames == cv2_decoded_count(hundred) == 100
    if strategy != "uniform:4":
        assert info.n_frames_decoded < 50  # decoding did stop early; the rest was only demuxed


def test_megatron_row_counts_the_stream_after_its_run(tmp_path: Path) -> None:
    """The `videos` row of a leading:20 build says 100 frames, though decoding stopped after ~20."""
    from faceshard.config import load_config
    from faceshard.records import VideoTask
    from faceshard.tasks.pipeline import VideoProcessor

    face = skimage.data.astronaut()  # dlib finds its face without upsampling (Megatron's setting)
    path = write_video(tmp_path / "face.mp4", [np.roll(face, 2 * i, axis=1) for i in range(100)])
    cfg = load_config(
        "megatron", overrides=["depth.enabled=false", "embed.enabled=false", "identity.enabled=false"]
    )
    row = VideoProcessor(cfg, device="cpu")(VideoTask("face", str(path), 0), 0).video
    assert row["status"] == "ok" and row["n_faces"] == 20, row
    assert row["n_frames"] == cv2_decoded_count(path) == 100
    assert row["n_frames_container"] == 100


STAMPS_MS = [0, 37, 500, 777, 1234, 1900, 2100, 2950, 3001, 4444, 4500, 6020]


def write_without_frame_rate(path: Path, stamps_ms: list[int]) -> Path:
    """Matroska with millisecond timestamps and no frame rate (as browsers' MediaRecorder writes WebM)."""
    tick = Fraction(1, 1000)
    base = cv2.resize(skimage.data.astronaut(), (64, 48))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg")
        stream.height, stream.width, stream.pix_fmt = 48, 64, "yuvj420p"
        stream.time_base = stream.codec_context.time_base = tick
        stream.codec_context.framerate = Fraction(0, 1)
        for i, pts in enumerate(stamps_ms):
            frame = av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="rgb24")
            frame.pts, frame.time_base = pts, tick
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def first_frame_of_each_second_by_cv2(path: Path) -> list[int]:
    """The oracle: OpenCV's per-frame position in milliseconds, first frame of each whole second."""
    capture = cv2.VideoCapture(str(path))
    firsts: dict[int, int] = {}
    index = 0
    while True:
        ok = capture.grab()
        if not ok:
            break
        firsts.setdefault(int(capture.get(cv2.CAP_PROP_POS_MSEC) // 1000), index)
        index += 1
    capture.release()
    return sorted(firsts.values())


def test_per_second_without_a_frame_rate_uses_timestamps(tmp_path: Path) -> None:
    path = write_without_frame_rate(tmp_path / "no_rate.mkv", STAMPS_MS)
    info = probe(path)
    assert info.fps == 0.0  # FFmpeg's only guess is the 1 kHz clock, not a frame rate
    selector = make_selector("per_second")
    drive(selector, path, info, lambda i: True)
    expected = first_frame_of_each_second_by_cv2(path)
    assert expected == [0, 4, 6, 8, 9, 11]  # seconds 0, 1, 2, 3, 4, 6 (no frame falls in second 5)
    assert accepted(selector, len(STAMPS_MS)) == expected
    selector = make_selector("per_second")
    drive(selector, path, info, lambda i: i not in {4, 6, 8})  # faceless firsts fall back in-second
    assert accepted(selector, len(STAMPS_MS)) == [0, 5, 7, 9, 11]  # second 3 has frame 8 only


def test_per_second_without_frame_rate_or_timestamps_is_an_error_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from faceshard.config import load_config
    from faceshard.records import VideoTask
    from faceshard.tasks import sampling
    from faceshard.tasks.pipeline import VideoProcessor

    with pytest.raises(VideoError, match="uniform:N or stride:K"):
        make_selector("per_second").start(VideoInfo(fps=0.0, width=64, height=48, n_frames_container=None))
    path = write_without_frame_rate(tmp_path / "no_rate.mkv", STAMPS_MS)
    monkeypatch.setattr(sampling, "frame_times", lambda path: None)  # a stream whose packets carry no pts
    cfg = load_config(
        "mintime", overrides=["identity.enabled=false", "embed.enabled=false", "detect.backend=dlib"]
    )
    row = VideoProcessor(cfg, device="cpu")(VideoTask("no_rate", str(path), 0), 0).video
    assert row["status"] == "error" and "uniform:N or stride:K" in row["error"], row
