"""Which frames of a video are decoded to RGB, shown to the detector and kept (SPEC §1).

Strategies live in a registry (`STRATEGIES`), parsed from `"name"` or `"name:N"`.

Selector protocol — one selector per worker, `start` per video::

    selector = make_selector("per_second", max_frames=None, fallback=2)
    selector.start(info, path)
    frames = iter_frames(path, info, selector.want, lambda: selector.done, feedback=selector.needs_feedback)
    for frame in frames:                         # simplest driver: detect each frame as it comes
        dets = detector([frame.rgb])[0]
        selector.found(frame.index, len(dets))
    kept = [f for f in faces if selector.accepted(f.frame)]   # final once iteration has ended

The pipeline batches instead, through `SampledDetection` (below): frames that are `ready` go to a
detection batch, the others are held until the batch's verdicts are in, and detected faces wait there
until their frame's acceptance is final.

* `want(i)` — should frame `i` be converted to RGB and detected? The decode thread asks ahead of the
  detector, so a feedback selector answers from what it knows so far and only ever narrows later
  (`iter_frames` asks again just before yielding). Indices are asked in increasing order.
* `needs_feedback` — True when `want` depends on earlier detections (`per_second`, `consecutive:N`):
  the pipeline must call `found(i, n_faces)` for every frame it detects, and passes `feedback=True` to
  `iter_frames` so speculative frames are not converted to RGB. Otherwise `found` is optional.
* `ready(i)` — may frame `i` be detected now? False while the verdict on an earlier frame it depends on
  is pending (a `per_second` fallback frame waits for its second's earlier tries); the pipeline holds
  such frames and asks again after the next detection batch. Frames that are ready may be batched.
* `sequential` — True when each frame must be detected before the next is pulled (`consecutive:N`,
  whose every frame depends on the previous one); `per_second` batches the first frames of many
  seconds and falls back only where they were empty.
* `done` — no further frame will be wanted; decoding stops. Breaking out of the loop on `done` is safe.
* `accepted(i)` — are the faces of frame `i` part of the sample? Selectors without feedback accept every
  frame they want; `per_second` accepts the frame whose box was used for its second; `consecutive:N`
  accepts its run, which is only final when iteration has ended.
* `final_when_accepted` — True when an accepted frame stays accepted whatever feedback follows (so its
  faces can be enriched at once); False for `consecutive:N`, whose best run can be replaced.
* `max_frames` caps the frames a selector accepts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np

from faceshard.errors import VideoError
from faceshard.records import Frame, VideoInfo
from faceshard.tasks.decode import count_frames, frame_times


class FrameSelector(ABC):
    """Base of all strategies; see the module docstring for the protocol."""

    needs_feedback: bool = False
    sequential: bool = False
    # With feedback: once `accepted(i)` is True it stays True, so faces can be processed right away.
    final_when_accepted: bool = True

    def __init__(self, max_frames: int | None = None) -> None:
        if max_frames is not None and max_frames < 1:
            raise ValueError("max_frames must be >= 1")
        self.max_frames = max_frames

    @abstractmethod
    def start(self, info: VideoInfo, path: str | Path | None = None) -> None:
        """Reset for a new video; `path` lets a strategy count frames without decoding."""

    @abstractmethod
    def want(self, index: int) -> bool: ...

    def ready(self, index: int) -> bool:
        """Whether frame `index` can be detected now (nothing it depends on is pending)."""
        return self.want(index)

    def found(self, index: int, n_faces: int) -> None:  # noqa: B027 - optional for index selectors
        """Detector feedback for a yielded frame; required when `needs_feedback`."""

    @property
    @abstractmethod
    def done(self) -> bool: ...

    @abstractmethod
    def accepted(self, index: int) -> bool: ...


class _IndexSelector(FrameSelector):
    """A fixed set of indices known up front: no feedback, batchable."""

    def start(self, info: VideoInfo, path: str | Path | None = None) -> None:
        self._last = self._plan(info, path)
        self._past_last = False

    @abstractmethod
    def _plan(self, info: VideoInfo, path: str | Path | None) -> int | None:
        """Prepare for a video; return the last index that can be wanted (None: until the end)."""

    @abstractmethod
    def _member(self, index: int) -> bool: ...

    def want(self, index: int) -> bool:
        if self._last is not None and index > self._last:
            self._past_last = True
            return False
        return self._member(index)

    @property
    def done(self) -> bool:
        return self._past_last

    def accepted(self, index: int) -> bool:
        return (self._last is None or index <= self._last) and self._member(index)


class AllFrames(_IndexSelector):
    """Every frame (up to `max_frames`)."""

    def _plan(self, info: VideoInfo, path: str | Path | None) -> int | None:
        return None if self.max_frames is None else self.max_frames - 1

    def _member(self, index: int) -> bool:
        return True


class Stride(_IndexSelector):
    """Frames 0, K, 2K, …"""

    def __init__(self, k: int, max_frames: int | None = None) -> None:
        super().__init__(max_frames)
        self.k = k

    def _plan(self, info: VideoInfo, path: str | Path | None) -> int | None:
        return None if self.max_frames is None else (self.max_frames - 1) * self.k

    def _member(self, index: int) -> bool:
        return index % self.k == 0


class Uniform(_IndexSelector):
    """DeepfakeBench: `numpy.linspace(0, n_frames - 1, N, dtype=int)` over the true frame count.

    The count comes from `count_frames(path)` (demuxing, no decoding) because headers can be wrong;
    without a path, from `info`. Duplicate indices (N > n_frames) are sampled once.
    """

    def __init__(self, n: int, max_frames: int | None = None) -> None:
        super().__init__(max_frames)
        self.n = n
        self.indices: list[int] = []

    def _plan(self, info: VideoInfo, path: str | Path | None) -> int | None:
        if path is not None:
            n_frames = count_frames(path)
        else:
            n_frames = info.n_frames_decoded or info.n_frames_container or 0
        planned = np.unique(np.linspace(0, n_frames - 1, self.n, dtype=int)) if n_frames else []
        self.indices = [int(i) for i in planned][: self.max_frames]
        self._members = frozenset(self.indices)
        return self.indices[-1] if self.indices else -1

    def _member(self, index: int) -> bool:
        return index in self._members


DEFAULT_FALLBACK_FRAMES = 2


def fallback_offsets(fps: int, fallback: int | None) -> tuple[int, ...]:
    """Offsets in a second of the frames tried, in order: 0, then `fallback` more evenly spaced.

    `None` (or as many as the second holds) is MINTIME's exhaustive search: every frame of the second.
    """
    if fallback is None or fallback >= fps - 1:
        return tuple(range(fps))
    spaced = (int(j * fps / (fallback + 1) + 0.5) for j in range(1, fallback + 1))
    return (0, *sorted(set(spaced)))


class PerSecond(FrameSelector):
    """MINTIME: one frame per second, at 0, fps, 2·fps… with fps = int(reported fps).

    If the second's first frame has no face, up to `fallback` further frames of that second, evenly
    spaced, are tried in order and the first one with a face is the sample: its boxes and its pixels
    (MINTIME mixed the two). `fallback=None` tries every frame of the second (MINTIME's exhaustive
    search): one face-less long video then costs a detection per frame.

    A video without a usable frame rate (int(fps) < 1; MINTIME skipped those) takes its seconds from the
    frames' timestamps, demuxed up front; with neither, the video is refused (VideoError) rather than
    every frame becoming its own second.
    """

    needs_feedback = True

    def __init__(self, max_frames: int | None = None, fallback: int | None = DEFAULT_FALLBACK_FRAMES) -> None:
        super().__init__(max_frames)
        if fallback is not None and fallback < 0:
            raise ValueError("fallback must be >= 0 (or None for every frame of the second)")
        self.fallback = fallback

    def start(self, info: VideoInfo, path: str | Path | None = None) -> None:
        self.fps = int(info.fps)
        self._seconds = [] if self.fps >= 1 else self._seconds_from_timestamps(path)
        self._first: dict[int, int] = {}  # timestamps only: second -> its first frame, and its length
        self._length: Counter[int] = Counter(self._seconds)
        for index, second in enumerate(self._seconds):
            self._first.setdefault(second, index)
        self._tries: dict[int, dict[int, int]] = {}  # frames in a second -> {offset: try position}
        self.chosen: dict[int, int] = {}  # second -> frame whose faces are kept
        self.empty: dict[int, int] = {}  # second -> how many of its first tries were found face-less

    def _position(self, index: int) -> int | None:
        """Which try of its second frame `index` is (0 = the second's first frame), None if none."""
        if self.fps >= 1:
            offset, length = index % self.fps, self.fps
        else:
            second = self._second(index)
            offset, length = index - self._first[second], self._length[second]
        if length not in self._tries:
            offsets = fallback_offsets(length, self.fallback)
            self._tries[length] = {offset: position for position, offset in enumerate(offsets)}
        return self._tries[length].get(offset)

    @staticmethod
    def _seconds_from_timestamps(path: str | Path | None) -> list[int]:
        times = frame_times(path) if path is not None else None
        if not times:
            raise VideoError(
                "per_second sampling needs a frame rate or frame timestamps and this video has neither; "
                "sample it with uniform:N or stride:K instead"
            )
        return [int(t) for t in times]

    def _second(self, index: int) -> int:
        if self.fps >= 1:
            return index // self.fps
        return self._seconds[min(index, len(self._seconds) - 1)]

    def want(self, index: int) -> bool:
        return not self.done and self._second(index) not in self.chosen and self._position(index) is not None

    def ready(self, index: int) -> bool:
        position = self._position(index)
        return (
            self.want(index) and position is not None and self.empty.get(self._second(index), 0) >= position
        )

    def found(self, index: int, n_faces: int) -> None:
        second = self._second(index)
        if self.done or second in self.chosen:
            return
        if n_faces > 0:
            self.chosen[second] = index
        else:
            position = self._position(index)
            self.empty[second] = max(self.empty.get(second, 0), (position or 0) + 1)

    @property
    def done(self) -> bool:
        return self.max_frames is not None and len(self.chosen) >= self.max_frames

    def accepted(self, index: int) -> bool:
        return self.chosen.get(self._second(index)) == index


class Consecutive(FrameSelector):
    """Megatron: the first N consecutive frames that contain a face; a face-less frame restarts the run.

    If no run reaches N (short or face-poor video), the longest run (earliest on ties) is accepted.
    """

    needs_feedback = True
    sequential = True  # whether a frame is wanted depends on the verdict on the one before it
    final_when_accepted = False  # a later, longer run replaces the best one so far

    def __init__(self, n: int, max_frames: int | None = None) -> None:
        super().__init__(max_frames)
        self.n = n if max_frames is None else min(n, max_frames)

    def start(self, info: VideoInfo, path: str | Path | None = None) -> None:
        self._run_start = 0
        self._run_len = 0
        self._last = -2
        self._best = (0, 0)  # (start, length)

    def want(self, index: int) -> bool:
        return not self.done

    def found(self, index: int, n_faces: int) -> None:
        if self.done:
            return
        if n_faces <= 0:
            self._run_len = 0
        elif self._run_len and index == self._last + 1:
            self._run_len += 1
        else:
            self._run_start, self._run_len = index, 1
        self._last = index
        if self._run_len > self._best[1]:
            self._best = (self._run_start, self._run_len)

    @property
    def done(self) -> bool:
        return self._best[1] >= self.n

    def accepted(self, index: int) -> bool:
        start, length = self._best
        return start <= index < start + length


class LeadingRun(FrameSelector):
    """Megatron's frames: 0, 1, 2, … while each has a face, at most N; the first face-less frame ends it.

    Megatron's `VideoDataset.extract_frames_and_faces` reads N frames from frame 0 and breaks at the
    first frame without a face; its `__getitem__` then drops a video with fewer than N. The run is
    accepted as far as it got (the sample builder drops a short one, and says how many it dropped), and
    held until the video ends so the embedder sees the whole run in one call (`pad:max`).
    """

    needs_feedback = True
    sequential = True  # frame i is wanted only if frame i-1 had a face
    final_when_accepted = False  # hold the run: `pad:max` pads to the largest crop of all of it

    def __init__(self, n: int, max_frames: int | None = None) -> None:
        super().__init__(max_frames)
        self.n = n if max_frames is None else min(n, max_frames)

    def start(self, info: VideoInfo, path: str | Path | None = None) -> None:
        self._run = 0  # frames 0 … _run-1 had a face
        self._ended = False

    def want(self, index: int) -> bool:
        return not self.done and index < self.n  # asked ahead of the verdicts: only ever narrows

    def found(self, index: int, n_faces: int) -> None:
        if self.done or index != self._run:
            return
        if n_faces > 0:
            self._run += 1
        else:
            self._ended = True

    @property
    def done(self) -> bool:
        return self._ended or self._run >= self.n

    def accepted(self, index: int) -> bool:
        return 0 <= index < self._run


def _integer(arg: str | None, name: str) -> int:
    if arg is None or not arg.isdigit() or int(arg) < 1:
        raise ValueError(f"sampling strategy {name!r} needs a positive integer, e.g. '{name}:32'")
    return int(arg)


STRATEGIES: dict[str, Callable[[str | None, int | None, int | None], FrameSelector]] = {
    "all": lambda arg, cap, fallback: AllFrames(cap),
    "per_second": lambda arg, cap, fallback: PerSecond(cap, fallback),
    "stride": lambda arg, cap, fallback: Stride(_integer(arg, "stride"), cap),
    "uniform": lambda arg, cap, fallback: Uniform(_integer(arg, "uniform"), cap),
    "consecutive": lambda arg, cap, fallback: Consecutive(_integer(arg, "consecutive"), cap),
    "leading": lambda arg, cap, fallback: LeadingRun(_integer(arg, "leading"), cap),
}
_TAKES_ARGUMENT = {"stride", "uniform", "consecutive", "leading"}


def make_selector(
    strategy: str, max_frames: int | None = None, fallback: int | None = DEFAULT_FALLBACK_FRAMES
) -> FrameSelector:
    """A fresh selector for `"per_second" | "all" | "uniform:N" | "stride:K" | "consecutive:N" | "leading:N"`.

    `fallback` (per_second only): further frames tried in a face-less second; None tries them all.
    """
    name, sep, arg = strategy.partition(":")
    if name not in STRATEGIES:
        raise ValueError(f"unknown sampling strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if sep and name not in _TAKES_ARGUMENT:
        raise ValueError(f"sampling strategy {name!r} takes no argument")
    return STRATEGIES[name](arg if sep else None, max_frames, fallback)


# Frames held back (decoded, waiting for an earlier frame's verdict) before the batch is detected early:
# bounds memory to a few detection batches of RGB frames whatever the video's length.
MAX_HELD_PER_BATCH = 3


class _OnFrame(Protocol):
    frame: int


FaceT = TypeVar("FaceT", bound=_OnFrame)


class SampledDetection(Generic[FaceT]):
    """One video's sampling driven by detector feedback: which decoded frames are detected together,
    and which detected faces are final.

    The feedback loop of a selector lives here, so the pipeline reads as a straight chain::

        run = SampledDetection(selector, batch_size)
        for batch in run.batches(frames):              # frames: the decoded frames the selector wants
            for frame, dets in zip(batch, detect(batch)):
                run.found(frame.index, len(dets), crop(frame, dets))
            enrich(run.settled())                     # faces whose frame is accepted for good
        enrich(run.finish())                          # the rest, once decoding has ended

    A `per_second` frame that is not `ready` (its second's earlier try is pending) is held until a
    batch's verdicts are in; then it is queued if the second is still face-less, dropped otherwise.
    A `consecutive` run can still be replaced, so its faces wait (those before a face-less frame,
    which can no longer be in the run, are dropped) until `finish`.
    """

    def __init__(
        self, selector: FrameSelector, batch_size: int, max_held_per_batch: int = MAX_HELD_PER_BATCH
    ):
        self.selector = selector
        self.batch_size = 1 if selector.sequential else max(1, batch_size)
        self.max_held = max_held_per_batch * self.batch_size
        self._pending: list[FaceT] = []  # found, acceptance not yet final
        self._last_faceless = -1  # faces at or before a face-less frame can only be kept if already accepted

    def batches(self, frames: Iterable[Frame]) -> Iterator[list[Frame]]:
        """Detection batches of `frames`; `found` must be called for each frame of a batch before the next."""
        batch: list[Frame] = []
        held: list[Frame] = []  # decoded frames waiting for the verdict on an earlier frame
        for frame in frames:
            (batch if self.selector.ready(frame.index) else held).append(frame)
            if len(batch) >= self.batch_size or len(held) >= self.max_held:
                if batch:
                    yield batch
                batch, held = self._release(held)
        while batch or held:  # the tail: each batch resolves the earliest held frame of every second
            if not batch:  # never reached for a consistent selector; guards an endless loop
                batch, held = held, []
            yield batch
            batch, held = self._release(held)

    def _release(self, held: list[Frame]) -> tuple[list[Frame], list[Frame]]:
        """After a batch's verdicts: (held frames now ready, those still waiting); unwanted ones go."""
        wanted = [frame for frame in held if self.selector.want(frame.index)]
        ready = [frame for frame in wanted if self.selector.ready(frame.index)]
        return ready, [frame for frame in wanted if not self.selector.ready(frame.index)]

    def found(self, index: int, n_detections: int, faces: list[FaceT]) -> None:
        """The detector's verdict on frame `index` and the faces cropped from it."""
        self.selector.found(index, n_detections)
        if not n_detections:
            self._last_faceless = index
        self._pending.extend(faces)

    def settled(self) -> list[FaceT]:
        """Faces whose frame is accepted for good, once per batch; hopeless ones are dropped."""
        selector = self.selector
        if not selector.needs_feedback:
            return self._drain(final=True)
        if selector.final_when_accepted:
            return self._drain(final=False)
        last = self._last_faceless
        self._pending = [f for f in self._pending if selector.accepted(f.frame) or f.frame > last]
        return []

    def finish(self) -> list[FaceT]:
        """Every accepted face still waiting, after the last batch (acceptance is final now)."""
        return self._drain(final=True)

    def _drain(self, final: bool) -> list[FaceT]:
        ready = [face for face in self._pending if self.selector.accepted(face.frame)]
        if final:
            self._pending = []
        else:  # accepted now means accepted for good: keep only the undecided ones
            kept_frames = {face.frame for face in ready}
            self._pending = [f for f in self._pending if f.frame not in kept_frames]
        return ready
