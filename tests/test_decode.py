"""tasks/decode.py on real photos encoded with libx264 in temp dirs, broken files and the shared clips."""

from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import skimage.data
from clips import write_video
from conftest import NO_SHARED, SHARED_FIXTURES

from faceshard.errors import VideoError
from faceshard.records import VideoInfo
from faceshard.tasks import decode
from faceshard.tasks.decode import count_frames, iter_frames, probe

FIXTURES = SHARED_FIXTURES
SIDE = 128


def photo_frames(n: int, side: int = SIDE) -> list[np.ndarray]:
    """The astronaut photo panned by 3 px per frame: real content, each frame distinct."""
    base = cv2.resize(skimage.data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)
    return [np.roll(base, 3 * i, axis=1) for i in range(n)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    frames = photo_frames(40)
    return write_video(tmp_path_factory.mktemp("decode") / "clip.mp4", frames, faststart=True), frames


def test_probe_reports_header(clip: tuple[Path, list[np.ndarray]]) -> None:
    info = probe(clip[0])
    assert (info.fps, info.width, info.height, info.n_frames_container) == (10.0, SIDE, SIDE, 40)
    assert info.n_frames_decoded == 0


def test_iter_frames_yields_only_wanted_frames_as_contiguous_rgb(clip: tuple[Path, list[np.ndarray]]) -> None:
    path, source = clip
    info = probe(path)
    frames = list(iter_frames(path, info, lambda i: i % 7 == 0))
    assert [f.index for f in frames] == [0, 7, 14, 21, 28, 35]
    assert info.n_frames_decoded == 40
    for frame in frames:
        assert frame.rgb.dtype == np.uint8 and frame.rgb.shape == (SIDE, SIDE, 3)
        assert frame.rgb.flags.c_contiguous
        # RGB, not BGR, and the right frame: close to its own source, far from a neighbour's.
        error = np.abs(frame.rgb.astype(int) - source[frame.index]).mean()
        assert error < 6
        assert error < np.abs(frame.rgb.astype(int) - source[frame.index + 1]).mean()
        assert error < np.abs(frame.rgb.astype(int) - source[frame.index][..., ::-1]).mean()


def test_count_frames_matches_decoded(clip: tuple[Path, list[np.ndarray]]) -> None:
    info = probe(clip[0])
    assert count_frames(clip[0]) == sum(1 for _ in iter_frames(clip[0], info, lambda i: True)) == 40


def test_grayscale_source_comes_out_rgb_and_missing_count_is_none(tmp_path: Path) -> None:
    path = tmp_path / "gray.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "gray"
        for i in range(12):
            gray = np.full((48, 64), 20 * i, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(gray, format="gray")))
        out.mux(stream.encode())
    info = probe(path)
    assert info.n_frames_container is None  # Matroska carries no frame count
    frames = list(iter_frames(path, info, lambda i: True))
    assert len(frames) == info.n_frames_decoded == count_frames(path) == 12
    assert frames[3].rgb.shape == (48, 64, 3) and frames[3].rgb.flags.c_contiguous
    assert np.abs(frames[3].rgb.astype(int) - 60).max() <= 1


def test_done_stops_decoding_early(clip: tuple[Path, list[np.ndarray]]) -> None:
    info = probe(clip[0])
    seen: list[int] = []

    def want(i: int) -> bool:
        seen.append(i)
        return True

    frames = list(iter_frames(clip[0], info, want, done=lambda: bool(seen) and max(seen) >= 4))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert info.n_frames_decoded == 5


@pytest.mark.parametrize("feedback", [False, True])
def test_consumer_recheck_drops_frames_no_longer_wanted(
    clip: tuple[Path, list[np.ndarray]], feedback: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode thread asks ahead; a frame is yielded only if still wanted when its turn comes.

    In feedback mode the frames wanted only speculatively are never converted to RGB.
    """
    conversions = []
    convert = decode._rgb
    monkeypatch.setattr(decode, "_rgb", lambda frame: conversions.append(1) or convert(frame))
    info = probe(clip[0])
    resolved = threading.Event()

    def want(i: int) -> bool:
        return i == 0 or not resolved.is_set()

    indices = []
    for frame in iter_frames(clip[0], info, want, queue_size=4, feedback=feedback):
        indices.append(frame.index)
        time.sleep(0.1)  # let the decode thread run ahead and fill the queue
        resolved.set()
    assert indices == [0]
    assert len(conversions) == 1 if feedback else len(conversions) > 1


def test_closing_early_stops_the_decode_thread(clip: tuple[Path, list[np.ndarray]]) -> None:
    info = probe(clip[0])
    frames = iter_frames(clip[0], info, lambda i: True, queue_size=2)
    assert next(frames).index == 0
    frames.close()
    assert not any(t.name == "faceshard-decode" for t in threading.enumerate())
    assert info.n_frames_decoded < 40


def test_memory_is_bounded_by_the_queue(tmp_path: Path) -> None:
    """A slow consumer: the decoder never runs more than the queue ahead, and used frames are freed."""
    path = write_video(tmp_path / "long.mp4", photo_frames(150, side=64))
    info = probe(path)
    queue_size = 3
    alive: list[weakref.ref] = []
    most_ahead = most_alive = 0
    for frame in iter_frames(path, info, lambda i: True, queue_size=queue_size):
        alive.append(weakref.ref(frame.rgb))
        time.sleep(0.002)
        most_ahead = max(most_ahead, info.n_frames_decoded - 1 - frame.index)
        del frame  # no cycles: refcounting frees it now unless something else holds it
        most_alive = max(most_alive, sum(r() is not None for r in alive))
    assert info.n_frames_decoded == 150
    # queued frames + the one the decode thread holds while waiting for room
    assert most_ahead <= queue_size + 1
    assert most_alive <= queue_size + 2


def test_exceptions_from_want_reach_the_caller(clip: tuple[Path, list[np.ndarray]]) -> None:
    def want(i: int) -> bool:
        if i == 3:
            raise RuntimeError("selector bug")
        return True

    with pytest.raises(RuntimeError, match="selector bug"):
        list(iter_frames(clip[0], probe(clip[0]), want))


# ------------------------------------------------------------------------------------------ bad inputs


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="file not found"):
        probe(tmp_path / "nope.mp4")


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match=r"empty file \(0 bytes\)"):
        probe(tmp_path / "empty.mp4")


def test_directory_named_like_a_video(tmp_path: Path) -> None:
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(VideoError, match="is a directory"):
        probe(tmp_path / "dir.mp4")
    with pytest.raises(VideoError, match="is a directory"):
        count_frames(tmp_path / "dir.mp4")


def test_text_file_named_mp4(tmp_path: Path) -> None:
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError, match="not a readable video container: Invalid data"):
        probe(tmp_path / "notes.mp4")


def test_audio_only_file(tmp_path: Path) -> None:
    path = tmp_path / "voice.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(8):
            samples = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            samples.sample_rate, samples.pts = 16000, i * 1024
            out.mux(stream.encode(samples))
        out.mux(stream.encode())
    with pytest.raises(VideoError, match=r"no video stream \(streams found: audio\)"):
        probe(path)
    with pytest.raises(VideoError, match="no video stream"):
        list(iter_frames(path, VideoInfo(10.0, 1, 1, None), lambda i: True))


def test_truncated_file_without_index_is_refused(tmp_path: Path) -> None:
    data = write_video(tmp_path / "full.mp4", photo_frames(30)).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # index (moov) is at the end: lost
    with pytest.raises(VideoError, match="not a readable video container"):
        probe(tmp_path / "cut.mp4")


def test_truncated_file_with_index_gives_partial_frames(tmp_path: Path) -> None:
    data = write_video(tmp_path / "full.mp4", photo_frames(30), faststart=True).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    info = probe(tmp_path / "cut.mp4")
    assert info.n_frames_container == 30
    frames = list(iter_frames(tmp_path / "cut.mp4", info, lambda i: True))
    assert 0 < len(frames) == info.n_frames_decoded < 30


def test_corrupt_middle_bytes_are_skipped(tmp_path: Path) -> None:
    data = bytearray(write_video(tmp_path / "full.mp4", photo_frames(60), faststart=True).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes()
    (tmp_path / "corrupt.mp4").write_bytes(bytes(data))
    info = probe(tmp_path / "corrupt.mp4")
    frames = list(iter_frames(tmp_path / "corrupt.mp4", info, lambda i: True))
    assert len(frames) == info.n_frames_decoded
    assert 30 < len(frames) <= 60  # frames on both sides of the damage still decode
    assert all(f.rgb.shape == (SIDE, SIDE, 3) for f in frames)


def test_nothing_decodable_raises(tmp_path: Path) -> None:
    data = bytearray(write_video(tmp_path / "full.mp4", photo_frames(30), faststart=True).read_bytes())
    payload = data.find(b"mdat") + 20
    data[payload:] = np.random.default_rng(1).integers(0, 256, len(data) - payload, np.uint8).tobytes()
    (tmp_path / "garbage.mp4").write_bytes(bytes(data))
    info = probe(tmp_path / "garbage.mp4")
    with pytest.raises(VideoError, match="no frame could be decoded"):
        list(iter_frames(tmp_path / "garbage.mp4", info, lambda i: True))


# ------------------------------------------------------------------------------------------ real clips


@pytest.mark.fixtures
@pytest.mark.skipif(not FIXTURES.is_dir(), reason=NO_SHARED)
def test_real_clip_counts_agree() -> None:
    path = FIXTURES / "forgerynet_fake_2_faces.mp4"
    info = probe(path)
    assert (info.width, info.height, info.fps) == (1280, 720, 20.0)
    frames = [f.index for f in iter_frames(path, info, lambda i: i % 20 == 0)]
    assert frames == list(range(0, info.n_frames_decoded, 20))
    assert info.n_frames_decoded == count_frames(path) == info.n_frames_container


def test_fsspec_urls_are_read_through_a_file_object(clip: tuple[Path, list[np.ndarray]]) -> None:
    import fsspec

    url = "memory://faceshard-test/clip.mp4"
    with fsspec.open(url, "wb") as handle:
        handle.write(clip[0].read_bytes())
    info = probe(url)
    assert (info.width, info.n_frames_container) == (SIDE, 40)
    assert [f.index for f in iter_frames(url, info, lambda i: i % 10 == 0)] == [0, 10, 20, 30]
    assert count_frames(url) == 40
    with pytest.raises(VideoError, match="file not found"):
        probe("memory://faceshard-test/missing.mp4")


def write_rotated(path: Path, frames: list[np.ndarray], degrees: int) -> Path:
    """An H.264 MP4 whose display matrix rotates it by `degrees` counter-clockwise (as phones write)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10, options={"crf": "10"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.set_display_rotation(degrees)
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    return path


def cv2_frames(path: Path) -> tuple[list[np.ndarray], int, int]:
    """The oracle: OpenCV honours the container's orientation (as MINTIME and DeepfakeBench read)."""
    capture = cv2.VideoCapture(str(path))
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames, width, height


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_rotated_clip_is_decoded_as_displayed(tmp_path: Path, degrees: int) -> None:
    """Issue #12: a 64 × 48 clip rotated by 90° is (64, 48, 3) frames of width 48, height 64, as cv2 says."""
    source = [cv2.resize(frame, (64, 48), interpolation=cv2.INTER_AREA) for frame in photo_frames(6)]
    path = write_rotated(tmp_path / f"rotated{degrees}.mp4", source, degrees)
    expected, cv2_width, cv2_height = cv2_frames(path)
    info = probe(path)
    assert (info.width, info.height) == (cv2_width, cv2_height)
    assert (info.width, info.height) == ((48, 64) if degrees % 180 else (64, 48))
    assert info.rotation == degrees % 360
    frames = list(iter_frames(path, info, lambda i: True))
    assert len(frames) == len(expected) == 6
    for frame, oracle in zip(frames, expected, strict=True):
        assert frame.rgb.shape == oracle.shape == (info.height, info.width, 3)
        assert frame.rgb.flags.c_contiguous
        error = np.abs(frame.rgb.astype(int) - oracle).mean()
        assert error < 2  # same decoder, same pixels (colour conversion may differ by a level)
        assert error < np.abs(frame.rgb.astype(int) - np.rot90(oracle, 2)).mean()  # not upside down
