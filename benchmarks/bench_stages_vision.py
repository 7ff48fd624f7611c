"""Decode and detection throughput of our stages against the raw libraries, in one run, as ratios.

    .venv/bin/python benchmarks/bench_stages_vision.py [--device auto] [--batch 4] [--repeat 3]

* decode: `tasks.decode.iter_frames` (background thread, bounded queue, RGB) vs a plain PyAV loop doing
  the same work (PyAV's default threads, every frame to RGB); then both with a consumer that spends
  `--work-ms` per frame off the GIL (what a GPU detector does), where our overlap should pay.
* detect: `models.detectors` MTCNN vs facenet_pytorch `MTCNN.detect` on the same batch of frames
  (PIL-resized by detect_scale, boxes scaled back), in faces/s.

Uses ../shared/fixtures/*.mp4 when present, else a synthetic clip made from skimage's astronaut.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from PIL import Image

from faceshard.config import DetectConfig
from faceshard.models.detectors import build_detector
from faceshard.tasks.decode import iter_frames, probe

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


def synthetic_clip(folder: Path, n: int = 150) -> Path:
    import skimage.data

    face = cv2.resize(skimage.data.astronaut(), (1280, 1280))[280:1000]
    path = folder / "synthetic.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        for i in range(n):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.roll(face, 4 * i, axis=1), format="rgb24")))
        out.mux(stream.encode())
    return path


def raw_decode(path: Path, work: Callable[[], None]) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        n = 0
        for frame in container.decode(stream):
            np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
            work()
            n += 1
    return n


def our_decode(path: Path, work: Callable[[], None]) -> int:
    n = 0
    for _ in iter_frames(path, probe(path), lambda i: True):
        work()
        n += 1
    return n


def paired(repeat: int, raw: Callable[[], int], ours: Callable[[], int]) -> tuple[int, float, int, float]:
    """Best time of each, runs interleaved (raw, ours, raw, …) so load drift on a shared box hits both."""
    raw_times, our_times, raw_count, our_count = [], [], 0, 0
    for _ in range(repeat):
        start = time.perf_counter()
        raw_count = raw()
        raw_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        our_count = ours()
        our_times.append(time.perf_counter() - start)
    return raw_count, min(raw_times), our_count, min(our_times)


def bench_decode(clips: list[Path], repeat: int, work_ms: float) -> None:
    def idle() -> None:
        pass

    def detector_like() -> None:
        time.sleep(work_ms / 1000)

    for label, work in (("decode→RGB", idle), (f"decode→RGB + {work_ms:g} ms/frame consumer", detector_like)):
        raw_frames = raw_time = ours_frames = ours_time = 0.0
        for clip in clips:
            n_raw, t_raw, n_ours, t_ours = paired(
                repeat, lambda c=clip, w=work: raw_decode(c, w), lambda c=clip, w=work: our_decode(c, w)
            )
            raw_frames, raw_time = raw_frames + n_raw, raw_time + t_raw
            ours_frames, ours_time = ours_frames + n_ours, ours_time + t_ours
        assert raw_frames == ours_frames, (raw_frames, ours_frames)
        raw_fps, ours_fps = raw_frames / raw_time, ours_frames / ours_time
        print(
            f"{label:<40} frames={int(ours_frames):5d}  raw PyAV {raw_fps:8.1f} f/s  "
            f"ours {ours_fps:8.1f} f/s  ratio ours/raw {ours_fps / raw_fps:5.2f}"
        )


def sample_frames(clips: list[Path], per_clip: int) -> dict[tuple[int, ...], list[np.ndarray]]:
    """A few frames spread over each clip, grouped by size (MTCNN batches need one size)."""
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for clip in clips:
        info = probe(clip)
        step = max(1, (info.n_frames_container or 100) // per_clip)
        frames = [f.rgb for f in iter_frames(clip, info, lambda i, s=step: i % s == 0)][:per_clip]
        groups.setdefault(frames[0].shape, []).extend(frames)
    return groups


def bench_detect(clips: list[Path], device: str, batch: int, scale: float, repeat: int) -> None:
    from facenet_pytorch import MTCNN

    cfg = DetectConfig(detect_scale=scale, batch_size=batch)
    ours = build_detector(cfg, device)
    resolved = ours.device
    raw = MTCNN(
        keep_all=True,
        thresholds=list(cfg.thresholds),
        min_face_size=cfg.min_face_size,
        factor=cfg.factor,
        device=torch.device(resolved),
    )
    groups = sample_frames(clips, batch)

    def run_raw() -> int:
        faces = 0
        for frames in groups.values():
            height, width = frames[0].shape[:2]
            size = (int(width * scale), int(height * scale))
            for start in range(0, len(frames), batch):
                images = [Image.fromarray(f).resize(size) for f in frames[start : start + batch]]
                boxes, _ = raw.detect(images)
                for frame_boxes in boxes:
                    if frame_boxes is not None:
                        np.asarray(frame_boxes, np.float64) * np.array(
                            [width / size[0], height / size[1]] * 2
                        )
                        faces += len(frame_boxes)
        return faces

    def run_ours() -> int:
        return sum(len(d) for frames in groups.values() for d in ours(frames))

    if resolved != "cpu":
        run_raw(), run_ours()  # warm-up (CUDA kernels, allocator)
    raw_faces, raw_time, our_faces, our_time = paired(repeat, run_raw, run_ours)
    n_frames = sum(len(f) for f in groups.values())
    print(
        f"MTCNN {resolved} scale {scale:g} batch {batch}: frames={n_frames} faces={our_faces} "
        f"(raw {raw_faces})  raw facenet {raw_faces / raw_time:7.1f} faces/s  "
        f"ours {our_faces / our_time:7.1f} faces/s  ratio ours/raw {raw_time / our_time:5.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=4, help="MTCNN batch = frames sampled per clip")
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work-ms", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clips = sorted(FIXTURES.glob("*.mp4")) if FIXTURES.is_dir() else [synthetic_clip(Path(tmp))]
        print(f"clips: {', '.join(c.name for c in clips)}  (torch threads {torch.get_num_threads()})")
        bench_decode(clips, args.repeat, args.work_ms)
        bench_detect(clips, args.device, args.batch, args.scale, args.repeat)


if __name__ == "__main__":
    main()
