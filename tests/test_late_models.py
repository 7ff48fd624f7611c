"""The depth and embedding models load on a thread while the first video decodes and detects; one
that cannot load is a fault of the shard (retried, then recorded), never an error row of a video."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from faceshard.app.synth import make_corpus
from faceshard.config import load_config
from faceshard.records import VideoTask
from faceshard.tasks.pipeline import ModelsUnavailable, VideoProcessor


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> VideoTask:
    manifest = make_corpus(tmp_path_factory.mktemp("corpus"), n_videos=1, seed=0)
    path = next(p for p in Path(manifest).parent.rglob("*.mp4"))
    return VideoTask(video_id="v0", path=str(path), label=0)


def test_videos_decode_and_detect_while_the_late_models_load(
    video: VideoTask, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    detected = threading.Event()
    original = VideoProcessor._load_late

    def slow_load(self: VideoProcessor) -> tuple:
        assert release.wait(120), "the first video never started while the models loaded"
        return original(self)

    def detecting(self: VideoProcessor, *args: object, **kwargs: object) -> object:
        detected.set()  # the first video started (decode, detect): now let the late models finish
        release.set()
        return real_faces(self, *args, **kwargs)

    real_faces = VideoProcessor._faces
    monkeypatch.setattr(VideoProcessor, "_load_late", slow_load)
    monkeypatch.setattr(VideoProcessor, "_faces", detecting)
    cfg = load_config(
        "demo", overrides=["depth.enabled=false", "embed.depth=false"]
    )  # the embedder still loads late
    processor = VideoProcessor(cfg, device="cpu")
    result = processor(video, 0)
    assert detected.is_set() and result.video["status"] in ("ok", "no_faces")
    assert processor.embedder is not None


def test_a_model_that_cannot_load_fails_the_shard_not_the_video(
    video: VideoTask, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: VideoProcessor) -> tuple:
        raise OSError("weights file truncated")

    monkeypatch.setattr(VideoProcessor, "_load_late", broken)
    processor = VideoProcessor(
        load_config("demo", overrides=["depth.enabled=false", "embed.depth=false"]), device="cpu"
    )
    with pytest.raises(ModelsUnavailable, match="weights file truncated"):
        processor(video, 0)
    assert processor.load_failed()  # get_processor builds a new one for the next shard
