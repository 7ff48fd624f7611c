"""A labelled synthetic video corpus made from real face photos that ship inside installed packages.

Why: tests, demos and benchmarks need videos whose faces, boxes, identities and fake frames are known
exactly, offline, in seconds, on any machine where faceshard is installed. Each clip pastes 1–3 real
people (scikit-image's astronaut and cameraman, matplotlib's Grace Hopper) onto a noisy background,
moving and changing size; "fake" clips replace one person's face by another person's face on a run of
frames. Every clip has a ground-truth JSON (per frame, per face: box, person, area ratio) and the corpus
has a `manifest.csv` (`path,label,method,split`).

The persons were chosen by measurement. On 1,400 faces sampled from 54 clips (seeds 4 and 5),
facenet-pytorch MTCNN (thresholds [0.85, 0.95, 0.95], min_face_size 20) found every pasted face (IoU
with the truth box ≥ 0.72, no extra detections), and dlib's face-recognition ResNet put the same person
at most 0.34 apart and different persons at least 0.62 apart; the closest pair, astronaut vs Grace
Hopper, sits at 0.62–0.70, so identity thresholds much above dlib's 0.6 would merge them. The 25×25
`skimage.data.lfw_subset()` faces are not used: upscaled and encoded, several pairs of different
persons fell below 0.6 and MTCNN missed some of them, so they would make the truth wrong.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

FPS = 10
FAKE_METHOD = "synthswap"
FRAME_SIZES = ((320, 240), (400, 300), (480, 360))  # (W, H), even sides for yuv420p
X264_OPTIONS = {"crf": "18", "preset": "veryfast", "x264-params": "mbtree=0"}
MIN_FACE_HEIGHT = 48  # px; MTCNN finds far smaller faces, this keeps dlib identities stable too
MAX_VIDEOS = 100
# A swapped-in face brings this much of its own surroundings (fraction of its box side, per side), with
# this feather: with 15 % and a softer edge MTCNN missed a few small swapped-in cameraman faces.
SWAP_MARGIN, SWAP_FEATHER = 0.3, 0.2

# Face boxes (x1, y1, x2, y2) that MTCNN returns on the full photos: the truth box is this box carried
# through the same scaling and translation as the pasted patch, so it is what a detector would return.
PHOTO_FACES: dict[str, tuple[float, float, float, float]] = {
    "astronaut": (179.3, 63.8, 265.6, 172.5),
    "grace_hopper": (175.1, 111.8, 352.9, 334.2),
    "cameraman": (199.2, 118.9, 254.3, 192.3),
}
PERSONS = tuple(PHOTO_FACES)


@dataclass(frozen=True)
class _Person:
    """A head-and-hair patch cut once from a photo, with its feathered mask and face box."""

    name: str
    patch: np.ndarray  # (h, w, 3) float32 RGB
    alpha: np.ndarray  # (h, w) float32 in [0, 1]
    face: tuple[float, float, float, float]  # face box in patch pixels, inside the patch


@dataclass(frozen=True)
class _Track:
    """One person on screen for a whole clip: its lane and the motion/size curves."""

    person: _Person
    lane: tuple[int, int]  # x range the patch stays in, so tracks never overlap
    face_lo: float
    face_hi: float
    size_freq: float
    size_phase: float
    x_freq: float
    x_phase: float
    y_freq: float
    y_phase: float


def _ellipse_alpha(h: int, w: int, feather: float) -> np.ndarray:
    """An inscribed ellipse, 1 inside and fading to 0 over `feather` (fraction of the radius) at its rim."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.sqrt(((x + 0.5 - w / 2) / (w / 2)) ** 2 + ((y + 0.5 - h / 2) / (h / 2)) ** 2)
    return np.clip((1.0 - r) / feather, 0.0, 1.0).astype(np.float32)


def _photo(name: str) -> np.ndarray:
    """The full RGB uint8 photo a photo person comes from."""
    if name == "astronaut":
        from skimage import data

        return data.astronaut()
    if name == "cameraman":
        from skimage import data

        return np.repeat(data.camera()[:, :, None], 3, axis=2)
    if name == "grace_hopper":
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as fh:
            return np.asarray(Image.open(fh).convert("RGB"))
    raise KeyError(name)


def _photo_person(name: str) -> _Person:
    """Cut head and hair around the measured face box: sides +35 %, top +50 % (hair), bottom +30 %."""
    image = _photo(name)
    fx1, fy1, fx2, fy2 = PHOTO_FACES[name]
    fw, fh = fx2 - fx1, fy2 - fy1
    x0 = max(0, int(fx1 - 0.35 * fw))
    y0 = max(0, int(fy1 - 0.50 * fh))
    x1 = min(image.shape[1], int(fx2 + 0.35 * fw))
    y1 = min(image.shape[0], int(fy2 + 0.30 * fh))
    patch = image[y0:y1, x0:x1].astype(np.float32)
    face = (fx1 - x0, fy1 - y0, fx2 - x0, fy2 - y0)
    return _Person(name, patch, _ellipse_alpha(*patch.shape[:2], feather=0.12), face)


@functools.cache
def _persons() -> tuple[_Person, ...]:
    """Every person the corpus draws from, cut once per process."""
    return tuple(_photo_person(name) for name in PERSONS)


def _blend(canvas: np.ndarray, image: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> None:
    """Alpha-blend `image` onto `canvas` with its top-left at (x0, y0), clipped to the canvas."""
    h, w = image.shape[:2]
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x0 + w, canvas.shape[1]), min(y0 + h, canvas.shape[0])
    if cx1 <= cx0 or cy1 <= cy0:
        return
    src = image[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    a = alpha[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0, None]
    region = canvas[cy0:cy1, cx0:cx1]
    region *= 1.0 - a
    region += a * src


def _resize(image: np.ndarray, w: int, h: int) -> np.ndarray:
    shrink = w < image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _wave(t: float, freq: float, phase: float) -> float:
    """A smooth 0…1 curve over the clip (t in 0…1)."""
    return 0.5 + 0.5 * float(np.sin(2 * np.pi * freq * t + phase))


def _place(track: _Track, t: float, height: int) -> tuple[np.ndarray, np.ndarray, int, int, tuple]:
    """Scale and position a track's patch at time t; returns patch, mask, top-left and float face box."""
    person = track.person
    face_h = track.face_lo + (track.face_hi - track.face_lo) * _wave(t, track.size_freq, track.size_phase)
    scale = face_h / (person.face[3] - person.face[1])
    ph, pw = person.patch.shape[:2]
    new_w, new_h = max(1, round(pw * scale)), max(1, round(ph * scale))
    sx, sy = new_w / pw, new_h / ph
    free_x = max(0, track.lane[1] - track.lane[0] - new_w)
    free_y = max(0, height - new_h)
    x0 = track.lane[0] + round(free_x * _wave(t, track.x_freq, track.x_phase))
    y0 = round(free_y * _wave(t, track.y_freq, track.y_phase))
    fx1, fy1, fx2, fy2 = person.face
    box = (x0 + fx1 * sx, y0 + fy1 * sy, x0 + fx2 * sx, y0 + fy2 * sy)
    return _resize(person.patch, new_w, new_h), _resize(person.alpha, new_w, new_h), x0, y0, box


def _paste_swap(canvas: np.ndarray, source: _Person, box: tuple[float, float, float, float]) -> None:
    """Face swap: map the source's face box (plus SWAP_MARGIN) onto `box`, blended by a soft ellipse."""
    fx1, fy1, fx2, fy2 = source.face
    mx, my = SWAP_MARGIN * (fx2 - fx1), SWAP_MARGIN * (fy2 - fy1)
    ph, pw = source.patch.shape[:2]
    sx0, sy0 = max(0, int(fx1 - mx)), max(0, int(fy1 - my))
    sx1, sy1 = min(pw, int(np.ceil(fx2 + mx))), min(ph, int(np.ceil(fy2 + my)))
    ax = (box[2] - box[0]) / (fx2 - fx1)
    ay = (box[3] - box[1]) / (fy2 - fy1)
    dx0, dy0 = round(box[0] + (sx0 - fx1) * ax), round(box[1] + (sy0 - fy1) * ay)
    dx1, dy1 = round(box[0] + (sx1 - fx1) * ax), round(box[1] + (sy1 - fy1) * ay)
    if dx1 - dx0 < 2 or dy1 - dy0 < 2:
        return
    face = _resize(source.patch[sy0:sy1, sx0:sx1], dx1 - dx0, dy1 - dy0)
    _blend(canvas, face, _ellipse_alpha(dy1 - dy0, dx1 - dx0, feather=SWAP_FEATHER), dx0, dy0)


# FF++'s swaps (FaceSwap, Deepfakes) replace the inner face: the convex hull of the landmarks from the
# brows to the chin, colour-corrected to the target and blended, so hair, ears, jaw line and head pose
# stay the source's. An inner-face swap keeps the face where it was: the donor's face box mapped onto
# the target's, only this part of it (fractions of the box: x1, y1, x2, y2) shown, with this feather.
INNER_FACE, INNER_FEATHER = (0.12, 0.18, 0.88, 0.98), 0.35


def _paste_inner_swap(canvas: np.ndarray, donor: _Person, box: tuple[float, float, float, float]) -> None:
    """FF++-style swap: the donor's inner face, on the target's face box, colour-matched and blended."""
    fx1, fy1, fx2, fy2 = donor.face
    ix1, iy1, ix2, iy2 = INNER_FACE
    bw, bh = box[2] - box[0], box[3] - box[1]
    dx0, dy0 = max(0, round(box[0] + ix1 * bw)), max(0, round(box[1] + iy1 * bh))
    dx1 = min(canvas.shape[1], round(box[0] + ix2 * bw))
    dy1 = min(canvas.shape[0], round(box[1] + iy2 * bh))
    if dx1 - dx0 < 2 or dy1 - dy0 < 2:
        return
    fw, fh = fx2 - fx1, fy2 - fy1
    # the donor's pixels over the same fractions of its own face box as the destination covers
    sx0, sx1 = fx1 + (dx0 - box[0]) / bw * fw, fx1 + (dx1 - box[0]) / bw * fw
    sy0, sy1 = fy1 + (dy0 - box[1]) / bh * fh, fy1 + (dy1 - box[1]) / bh * fh
    patch = donor.patch[max(0, int(sy0)) : int(np.ceil(sy1)), max(0, int(sx0)) : int(np.ceil(sx1))]
    face = _resize(patch, dx1 - dx0, dy1 - dy0)
    alpha = _ellipse_alpha(dy1 - dy0, dx1 - dx0, feather=INNER_FEATHER)
    target = canvas[dy0:dy1, dx0:dx1]
    inside = alpha > 0.5
    if inside.any():  # colour correction: the donor's skin tone moved to the target's
        face = face - face[inside].mean(axis=0) + target[inside].mean(axis=0)
    _blend(canvas, np.clip(face, 0, 255), alpha, dx0, dy0)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A plain colour with soft blotches and pixel noise, static over the clip."""
    base = rng.uniform(60, 200, size=3).astype(np.float32)
    blotches = rng.normal(0, 18, size=(5, 7, 3)).astype(np.float32)
    smooth = cv2.resize(blotches, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 6, size=(height, width, 3)).astype(np.float32)
    return np.clip(base + smooth + noise, 0, 255).astype(np.float32)


def _make_tracks(rng: np.random.Generator, persons: list[_Person], width: int, height: int) -> list[_Track]:
    """Split the width into one lane per person and draw each person's size and motion curves."""
    lanes = np.linspace(0, width, len(persons) + 1).round().astype(int)
    tracks = []
    for k, person in enumerate(persons):
        lane = (int(lanes[k]), int(lanes[k + 1]))
        ph, pw = person.patch.shape[:2]
        face_h = person.face[3] - person.face[1]
        # the largest face whose patch still fits the lane and the frame, with rounding slack
        face_max = 0.97 * min((lane[1] - lane[0]) * face_h / pw, height * face_h / ph)
        if face_max < MIN_FACE_HEIGHT:
            raise ValueError(f"{width}x{height} is too small for {len(persons)} faces")
        lo = rng.uniform(MIN_FACE_HEIGHT, MIN_FACE_HEIGHT + 0.4 * (face_max - MIN_FACE_HEIGHT))
        hi = rng.uniform(lo + 0.4 * (face_max - lo), face_max)
        tracks.append(
            _Track(
                person=person,
                lane=lane,
                face_lo=float(lo),
                face_hi=float(hi),
                size_freq=float(rng.uniform(0.5, 1.5)),
                size_phase=float(rng.uniform(0, 2 * np.pi)),
                x_freq=float(rng.uniform(0.3, 1.2)),
                x_phase=float(rng.uniform(0, 2 * np.pi)),
                y_freq=float(rng.uniform(0.3, 1.2)),
                y_phase=float(rng.uniform(0, 2 * np.pi)),
            )
        )
    return tracks


def _area_ratio(box: list[int], width: int, height: int) -> int:
    """SPEC §4: int(100 · h · w / (W · H)) of the face box, in exact integer arithmetic."""
    return (100 * (box[2] - box[0]) * (box[3] - box[1])) // (width * height)


def _encode(path: Path, frames: list[np.ndarray], fps: int = FPS) -> None:
    """H.264 in MP4 through PyAV: yuv420p from RGB (H, W, 3) frames, monochrome from gray (H, W) ones.

    Same pixels, same bytes: one encoder thread (x264's output depends on its thread count) and no
    macroblock-tree rate control (with it, the same frames encoded to different bytes from run to run).
    RGB goes to BT.601 limited range (what decoders assume for untagged video) through OpenCV.
    """
    height, width = frames[0].shape[:2]
    gray = frames[0].ndim == 2
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=X264_OPTIONS)
        stream.width, stream.height = width, height
        stream.pix_fmt = "gray" if gray else "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.thread_count = 1
        for index, pixels in enumerate(frames):
            planes = pixels if gray else cv2.cvtColor(pixels, cv2.COLOR_RGB2YUV_I420)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(planes), format=stream.pix_fmt)
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@dataclass(frozen=True)
class _ClipPlan:
    video_id: str
    n_persons: int
    fake: bool


def _plan(n_videos: int) -> list[_ClipPlan]:
    """Clip k shows 1, 2, 3, 1, … persons and every second clip is fake, so any corpus of three or more
    clips holds a 1-, 2- and 3-person clip and a fake, and every person count has real and fake clips."""
    return [
        _ClipPlan(video_id=f"synth_{k:03d}", n_persons=k % 3 + 1, fake=k % 2 == 1) for k in range(n_videos)
    ]


def _splits(n_videos: int, seed: int) -> list[str]:
    """About 60/20/20 train/val/test, at least one val and one test clip from three clips on."""
    n_held = 0 if n_videos < 3 else max(1, round(0.2 * n_videos))
    labels = ["val"] * n_held + ["test"] * n_held + ["train"] * (n_videos - 2 * n_held)
    order = np.random.default_rng([seed, 7]).permutation(n_videos)
    return [labels[int(rank)] for rank in np.argsort(order)]


def _render_frames(
    tracks: list[_Track],
    background: np.ndarray,
    n_frames: int,
    swaps: dict[int, tuple[_Person, range]],
    shift: int = 0,
    inner: bool = False,
) -> tuple[list[np.ndarray], list[dict]]:
    """The clip's frames and per-frame truth; track k's face is swapped on the frames `swaps[k]` names.

    `shift` renders frame i as the scene's frame i + shift (a fake whose frames do not line up); `inner`
    swaps as FF++ does (`_paste_inner_swap`), else the donor's face and surroundings are pasted.
    """
    height, width = background.shape[:2]
    frames, truth_frames = [], []
    for i in range(n_frames):
        canvas = background.copy()
        faces = []
        for k, track in enumerate(tracks):
            patch, alpha, x0, y0, box = _place(track, (i + shift) / n_frames, height)
            _blend(canvas, patch, alpha, x0, y0)
            swap_source, swap_frames = swaps.get(k, (None, range(0)))
            swapped = swap_source is not None and i in swap_frames
            if swapped:
                (_paste_inner_swap if inner else _paste_swap)(canvas, swap_source, box)
            int_box = [round(v) for v in box]
            faces.append(
                {
                    "track": k,
                    "person": swap_source.name if swapped else track.person.name,
                    "box": int_box,
                    "area_ratio": _area_ratio(int_box, width, height),
                    "swapped_from": track.person.name if swapped else None,
                }
            )
        frames.append(np.clip(canvas, 0, 255).round().astype(np.uint8))
        truth_frames.append({"frame": i, "faces": faces})
    return frames, truth_frames


def _render_clip(plan: _ClipPlan, seed: int, index: int, videos_dir: Path) -> dict:
    """Draw, render and encode one clip; returns its truth record (without split)."""
    rng = np.random.default_rng([seed, index])
    pool = list(_persons())
    width, height = FRAME_SIZES[int(rng.integers(1 if plan.n_persons == 3 else 0, len(FRAME_SIZES)))]
    n_frames = int(rng.integers(30, 41))
    chosen = [pool[int(i)] for i in rng.choice(len(pool), size=plan.n_persons, replace=False)]
    tracks = _make_tracks(rng, chosen, width, height)

    swap_track, swap_source, swap_frames = None, None, range(0)
    if plan.fake:
        swap_track = int(rng.integers(plan.n_persons))
        on_screen = {p.name for p in chosen}
        outsiders = [p for p in pool if p.name not in on_screen]
        candidates = outsiders or [p for p in chosen if p.name != chosen[swap_track].name]
        swap_source = candidates[int(rng.integers(len(candidates)))]
        length = int(rng.integers(n_frames // 3, 2 * n_frames // 3 + 1))
        start = int(rng.integers(0, n_frames - length + 1))
        swap_frames = range(start, start + length)

    background = _background(rng, width, height)
    swaps = {swap_track: (swap_source, swap_frames)} if swap_track is not None and swap_source else {}
    frames, truth_frames = _render_frames(tracks, background, n_frames, swaps)

    path = videos_dir / f"{plan.video_id}.mp4"
    _encode(path, frames)
    shown = {face["person"] for frame in truth_frames for face in frame["faces"]}
    return {
        "video_id": plan.video_id,
        "path": f"videos/{path.name}",
        "label": int(plan.fake),
        "method": FAKE_METHOD if plan.fake else "",
        "width": width,
        "height": height,
        "fps": FPS,
        "n_frames": n_frames,
        "persons": [t.person.name for t in tracks],
        "n_identities": len(shown),
        "fake_frames": list(swap_frames),
        "frames": truth_frames,
    }


def make_corpus(out: str | Path, n_videos: int = 6, seed: int = 0) -> Path:
    """Write `n_videos` labelled clips, `truth/<video_id>.json` and `manifest.csv` under `out`.

    Returns the manifest path. The same seed gives the same manifest and truth bytes everywhere and the
    same video bytes with the same PyAV/FFmpeg build (one encoder thread); clip k is the same whatever
    `n_videos` is (only the split assignment depends on it).
    """
    if not 1 <= n_videos <= MAX_VIDEOS:
        raise ValueError(f"n_videos must be in 1..{MAX_VIDEOS}, got {n_videos}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    root = Path(out)
    videos_dir, truth_dir = root / "videos", root / "truth"
    videos_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    splits = _splits(n_videos, seed)
    rows = []
    for index, plan in enumerate(_plan(n_videos)):
        truth = _render_clip(plan, seed, index, videos_dir)
        truth = {**truth, "split": splits[index], "seed": seed}
        (truth_dir / f"{plan.video_id}.json").write_text(json.dumps(truth, indent=1) + "\n")
        rows.append((truth["path"], truth["label"], truth["method"], truth["split"]))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "label", "method", "split"])
        writer.writerows(rows)
    return manifest


FFPP_METHODS = ("swap_a", "swap_b", "swap_c", "swap_d")
# Fakes that do not line up with their source, as re-published or badly paired fakes are found:
# frames shifted by half a second, re-encoded at another size, cut shorter.
MISALIGNED = ("shifted", "resized", "shorter")
MISALIGNED_SHIFT = 5  # frames


def _render_group(
    seed: int,
    index: int,
    videos_dir: Path,
    misaligned: bool,
    frames: int | None,
    fps: int = FPS,
    size: tuple[int, int] | None = None,
    inner: bool = False,
) -> list[dict]:
    """One FF++-shaped group: a source clip (2 persons on even groups, 1 on odd ones), 4 fakes of it
    that keep every frame and swap one person's face on every frame (alternating which person; `inner`:
    only the inner face, as FF++ does, `_paste_inner_swap`), and
    with `misaligned` the 3 MISALIGNED fakes. Returns the truth records, source first."""
    rng = np.random.default_rng([seed, 1000 + index])
    pool = list(_persons())
    n_persons = 2 if index % 2 == 0 else 1
    width, height = FRAME_SIZES[int(rng.integers(0, len(FRAME_SIZES)))]
    if size is not None:
        width, height = size
    n_frames = int(rng.integers(30, 41)) if frames is None else frames
    chosen = [pool[int(i)] for i in rng.choice(len(pool), size=n_persons, replace=False)]
    outsiders = [p for p in pool if p not in chosen]
    tracks = _make_tracks(rng, chosen, width, height)
    background = _background(rng, width, height)
    source_id = f"src_{index:03d}"
    every = range(n_frames)
    clips: list[tuple[str, str, dict, int, int, tuple[int, int] | None]] = [
        (source_id, "", {}, 0, n_frames, None)
    ]
    for m, method in enumerate(FFPP_METHODS):
        swaps = {m % n_persons: (outsiders[m % len(outsiders)], every)}
        clips.append((f"{source_id}_{method}", method, swaps, 0, n_frames, None))
    if misaligned:
        swaps = {0: (outsiders[0], every)}
        other = (width // 4 * 2, height // 4 * 2) if size else _next_size(width, height)
        clips.append((f"{source_id}_shifted", "shifted", swaps, MISALIGNED_SHIFT, n_frames, None))
        clips.append((f"{source_id}_resized", "resized", swaps, 0, n_frames, other))
        clips.append((f"{source_id}_shorter", "shorter", swaps, 0, n_frames - MISALIGNED_SHIFT, None))
    records = []
    for video_id, method, swaps, shift, length, resized in clips:
        frames, truth_frames = _render_frames(tracks, background, length, swaps, shift, inner=inner)
        if resized is not None:
            frames = [_resize(f, *resized) for f in frames]
            sx, sy = resized[0] / width, resized[1] / height
            for frame in truth_frames:
                for face in frame["faces"]:
                    x1, y1, x2, y2 = face["box"]
                    face["box"] = [round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy)]
        path = videos_dir / f"{video_id}.mp4"
        _encode(path, frames, fps)
        fake = video_id != source_id
        records.append(
            {
                "video_id": video_id,
                "path": f"videos/{path.name}",
                "label": int(fake),
                "method": method,
                "source": source_id if fake else "",
                "aligned": method not in MISALIGNED,
                "width": resized[0] if resized else width,
                "height": resized[1] if resized else height,
                "fps": fps,
                "n_frames": length,
                "persons": [t.person.name for t in tracks],
                "swapped_tracks": sorted(swaps),
                "n_identities": n_persons,
                "fake_frames": list(every) if fake else [],
                "frames": truth_frames,
            }
        )
    return records


def _next_size(width: int, height: int) -> tuple[int, int]:
    return FRAME_SIZES[(FRAME_SIZES.index((width, height)) + 1) % len(FRAME_SIZES)]


def make_ffpp_corpus(
    out: str | Path,
    n_sources: int = 4,
    seed: int = 0,
    misaligned: bool = True,
    frames: int | None = None,
    fps: int = FPS,
    size: tuple[int, int] | None = None,
    inner: bool = False,
) -> Path:
    """An FF++-shaped corpus: `n_sources` source clips, each with 4 aligned fakes (one person's face
    swapped on every frame; on 2-person sources the swapped person alternates) and, with `misaligned`,
    3 fakes that do not line up with it (`MISALIGNED`). The manifest links every fake to its source
    (`video_id`, `source` columns); a group shares its split. Clips last 30-40 frames, or `frames`, at
    `fps`, 320x240 to 480x360 or `size` (W, H) (FF++ c23 itself: 25-30 fps, 480p-1080p, ~10-20 s).
    `inner` swaps only the inner face, colour-matched and blended, as FF++'s FaceSwap/Deepfakes do (MTCNN's
    box then moves more, not less: see the README); the default pastes the donor's face with its
    surroundings onto the face box. Returns the manifest path."""
    if not 1 <= n_sources <= MAX_VIDEOS:
        raise ValueError(f"n_sources must be in 1..{MAX_VIDEOS}, got {n_sources}")
    root = Path(out)
    videos_dir, truth_dir = root / "videos", root / "truth"
    videos_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    splits = _splits(n_sources, seed)
    rows = []
    for index in range(n_sources):
        for truth in _render_group(seed, index, videos_dir, misaligned, frames, fps, size, inner):
            truth = {**truth, "split": splits[index], "seed": seed}
            (truth_dir / f"{truth['video_id']}.json").write_text(json.dumps(truth, indent=1) + "\n")
            rows.append(
                (
                    truth["video_id"],
                    truth["path"],
                    truth["label"],
                    truth["method"],
                    truth["split"],
                    truth["source"],
                )
            )
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["video_id", "path", "label", "method", "split", "source"])
        writer.writerows(rows)
    return manifest


def load_truth(root: str | Path) -> dict[str, dict]:
    """Every clip's truth record under a corpus root, keyed by video_id."""
    truth_dir = Path(root) / "truth"
    return {p.stem: json.loads(p.read_text()) for p in sorted(truth_dir.glob("*.json"))}


def _simple_clip(person: _Person, width: int, height: int, n_frames: int, seed: int) -> list[np.ndarray]:
    """Frames of one person drifting and breathing in size over a noisy background."""
    rng = np.random.default_rng(seed)
    track = _make_tracks(rng, [person], width, height)[0]
    background = _background(rng, width, height)
    frames = []
    for i in range(n_frames):
        canvas = background.copy()
        patch, alpha, x0, y0, _ = _place(track, i / n_frames, height)
        _blend(canvas, patch, alpha, x0, y0)
        frames.append(np.clip(canvas, 0, 255).round().astype(np.uint8))
    return frames


def _mdat_range(data: bytes) -> tuple[int, int]:
    """Byte range of the payload of the top-level `mdat` box of an MP4 file."""
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        header = 8
        if size == 1:
            size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:
            size = len(data) - pos
        if kind == b"mdat":
            return pos + header, pos + size
        pos += size
    raise ValueError("no mdat box")


def _write_audio_only(path: Path, seconds: float = 1.0, rate: int = 44100) -> None:
    """An MP4 with one AAC stream (a 440 Hz tone) and no video stream."""
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
        chunk = 1024
        for start in range(0, len(samples), chunk):
            piece = samples[None, start : start + chunk]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


ODD_NAME = "odd name – ‘quoted’ \"double\" 'single' é 顔 #1.mp4"


def write_broken_samples(directory: str | Path) -> dict[str, Path]:
    """Write inputs that a robust pipeline must survive (one error row each, or a clean result).

    Keys: `good` (a normal one-person clip the others derive from), `empty` (zero bytes), `truncated`
    (first 30 % of `good`: no moov box), `text` (plain text named .mp4), `audio_only` (AAC, no video
    stream), `directory` (a folder named x.mp4), `corrupt_middle` (`good` with its mid frame data
    overwritten by random bytes: the container opens, the frames do not decode cleanly), `tiny_frames`
    (16×16), `one_frame`, `grayscale` (gray content, yuv420p), `monochrome` (a 4:0:0 H.264 stream,
    which FFmpeg decodes as yuv420p with flat chroma), `odd_name` (spaces, quotes, non-ASCII) and
    `symlink` (relative link to `good`). The same bytes on every run.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    persons = {p.name: p for p in _persons()}
    paths: dict[str, Path] = {}

    paths["good"] = root / "good.mp4"
    _encode(paths["good"], _simple_clip(persons["astronaut"], 320, 240, 20, seed=1))
    good = paths["good"].read_bytes()

    paths["empty"] = root / "empty.mp4"
    paths["empty"].write_bytes(b"")
    paths["truncated"] = root / "truncated.mp4"
    paths["truncated"].write_bytes(good[: int(0.3 * len(good))])
    paths["text"] = root / "text.mp4"
    paths["text"].write_text("this is not a video, only text with an .mp4 name\n")
    paths["audio_only"] = root / "audio_only.mp4"
    _write_audio_only(paths["audio_only"])
    paths["directory"] = root / "x.mp4"
    paths["directory"].mkdir(exist_ok=True)

    start, stop = _mdat_range(good)
    lo, hi = start + int(0.4 * (stop - start)), start + int(0.6 * (stop - start))
    noise = np.random.default_rng(2).integers(0, 256, size=hi - lo, dtype=np.uint8).tobytes()
    paths["corrupt_middle"] = root / "corrupt_middle.mp4"
    paths["corrupt_middle"].write_bytes(good[:lo] + noise + good[hi:])

    paths["tiny_frames"] = root / "tiny_frames.mp4"
    rng = np.random.default_rng(3)
    _encode(paths["tiny_frames"], [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(10)])
    paths["one_frame"] = root / "one_frame.mp4"
    _encode(paths["one_frame"], _simple_clip(persons["grace_hopper"], 320, 240, 1, seed=4))
    gray_frames = [
        cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in _simple_clip(persons["cameraman"], 320, 240, 20, seed=5)
    ]
    paths["grayscale"] = root / "grayscale.mp4"
    _encode(paths["grayscale"], [np.repeat(g[:, :, None], 3, axis=2) for g in gray_frames])
    paths["monochrome"] = root / "monochrome.mp4"
    _encode(paths["monochrome"], gray_frames)
    paths["odd_name"] = root / ODD_NAME
    paths["odd_name"].write_bytes(good)

    paths["symlink"] = root / "link_to_good.mp4"
    if paths["symlink"].is_symlink() or paths["symlink"].exists():
        paths["symlink"].unlink()
    os.symlink(paths["good"].name, paths["symlink"])
    return paths
