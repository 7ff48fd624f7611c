"""PyTorch iterable datasets that stream training samples straight from committed shards.

Why iterable and shard by shard: a split of ForgeryNet does not fit in memory, and Parquet is read
best a file at a time. Each epoch the committed shards of the requested splits are permuted with
`(seed, epoch)` and dealt round-robin to the `world_size × num_workers` consumers (distributed rank
× DataLoader worker), so every video is read by exactly one consumer: no duplicates, no gaps. A
consumer reads one shard at a time (faces, videos, identities of that shard), converts its columns
Arrow → numpy once (fixed_size_list buffers reshaped, no per-row work), builds one sample per video
(faceshard.storage.sequences) and passes it through a bounded shuffle buffer seeded with
`(seed, epoch, consumer)`; numpy becomes torch with `torch.from_numpy` (no copy). Memory is bounded by
one shard plus the buffer, never by the split.

The dataset is a snapshot: the committed shards are read from the commit markers when it is made
(`storage/commit.read_state`), never by listing directories, so half-written shards are never seen.
Call `set_epoch(epoch)` before iterating each epoch (a DataLoader with `persistent_workers=False`
hands the new epoch to its workers).
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from faceshard.errors import StorageError
from faceshard.storage import fsio
from faceshard.storage.commit import OutputState, locate, read_state
from faceshard.storage.reader import MissingColumnsError, fixed_list_to_numpy, how_to_add
from faceshard.storage.sequences import (
    QUOTA_FRACTIONS,
    MintimeSample,
    clip_rows,
    deepfakebench_clip_rows,
    identity_order,
    megatron_identity_sample,
    megatron_sample,
    mintime_sample,
)

Kind = Literal["mintime", "megatron", "megatron_identity", "clips"]
KINDS: tuple[str, ...] = ("mintime", "megatron", "megatron_identity", "clips")


@dataclass(frozen=True)
class SampleOptions:
    """Shape of the samples: MINTIME slots, Megatron sequence length, DeepfakeBench clips.

    `video_index` gives MINTIME's dataset index per video_id: the parity of the index its loader was
    called with picks the faces within an identity (`storage.sequences.linspace_picks`). MINTIME's
    index is the video's row in the list its train.py builds (its CSV shuffled with
    `random_state`, videos without crops dropped, then `max_videos`): pass
    `mintime_video_index(that list)` to get its picks. A video not in the mapping (or every video,
    without one) gets `zlib.crc32(video_id)`: stable across builds, shards, workers and epochs, one
    parity per video as in MINTIME. The index used is in each sample (`index`).
    `mintime_forward` adds the `forward` dict (MINTIME's forward arguments, float32 `x`; 4 MB a sample
    at 16 × 49 × 1280): set it False to save memory when only our own model reads the samples.
    """

    num_frames: int = 16
    max_identities: int = 2
    megatron_length: int = 20
    clip_frames: int = 32
    clip: int = 8
    # DeepfakeBench resizes every face to its `resolution` (256) before a clip is stacked; None keeps
    # stored crops as they are (then they must all share one size: `--set crop.store=pad:S`).
    clip_size: int | None = 256
    # `deepfakebench`: its loader's clips (first clip_frames faces, n // clip clips, none repeated);
    # `repeat`: always clip_frames // clip clips over linspace-spaced faces (short videos repeat faces).
    clip_rule: Literal["deepfakebench", "repeat"] = "deepfakebench"
    video_index: Mapping[str, int] | None = None
    mintime_forward: bool = True
    # MINTIME samples also carry `identity_label (F,)`: per slot, 1 where the build labelled that identity
    # manipulated (source-aware builds, `identities.manipulated`), 0 where untouched, the video's label
    # where unknown, -1 on padding. Off by default: MINTIME trains on the video label.
    identity_labels: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.max_identities <= max(QUOTA_FRACTIONS):
            raise ValueError(
                f"max_identities must be 1…{max(QUOTA_FRACTIONS)}: MINTIME has slot quotas for up to "
                f"{max(QUOTA_FRACTIONS)} identities, got {self.max_identities}"
            )

    def index_of(self, video_id: str) -> int:
        """The dataset index of `video_id` whose parity MINTIME's picking uses (see the class doc)."""
        if self.video_index is not None and video_id in self.video_index:
            return int(self.video_index[video_id])
        return zlib.crc32(video_id.encode())


def mintime_video_id(path: str) -> str:
    """Our ForgeryNet video_id of an entry of MINTIME's lists (`train/…`, `val/…`, `test/…`).

    MINTIME renamed the release folders by split: its `train/` and `val/` (carved from Training) are
    `train_video_release/`, its `test/` is `val_video_release/`; the rest of the path (`…/video.mp4`,
    extension kept) is the same as ours. Other paths are returned as they are.
    """
    head, sep, rest = path.removeprefix("./").partition("/")
    release = {"train": "train_video_release", "val": "train_video_release", "test": "val_video_release"}
    return f"{release[head]}/{rest}" if sep and head in release else path


def mintime_video_index(videos: Sequence[str]) -> dict[str, int]:
    """{our video_id: MINTIME's dataset index} from the video list its train.py builds (its order)."""
    return {mintime_video_id(video): index for index, video in enumerate(videos)}


def consumer_slot(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(this consumer's index, number of consumers) over distributed ranks × DataLoader workers.

    rank/world_size default to torch.distributed's when it is initialised, else a single rank.
    """
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world_size = 0, 1
    worker = get_worker_info()
    workers, worker_id = (1, 0) if worker is None else (worker.num_workers, worker.id)
    return rank * workers + worker_id, world_size * workers


class ShardDataset(IterableDataset):
    """Training samples of one kind over the committed shards of some splits (see module doc).

    Each item is a dict of tensors (plus `video_id` and `method` strings): for `mintime`
    `features (F,P,C)`, `size_bucket`, `identity`, `positions (F,P)`, `mask`, `identities_mask (F,F)`,
    `frame` and `face` (the face in each slot, -1 on padding), `index` (the dataset index whose parity
    picked the faces), `label`, and `forward`: MINTIME's forward
    arguments (`mintime_forward`); a video whose faces have no identity is one identity of all its
    faces (MINTIME's rule), so every video with a face gives a sample; for `megatron`
    (Megatron's own rule, SPEC §8) `rgb (N,D)`, `depth (N,D)` float32 with its positional encoding
    added, `label` (1 = original, Megatron's), videos Megatron drops left out and counted in
    `dropped` (this process's count); for `megatron_identity` (ours) `rgb (N,D)`, `depth (N,D)`, `mask`,
    `label` (1 = fake); for `clips` `clips (n_clips, clip, …)`, `label`
    (stored crops resized to `options.clip_size`, as DeepfakeBench does).
    `feature` picks the MINTIME input column (default: `tokens` when stored, else `emb_rgb`).
    """

    def __init__(
        self,
        uri: str,
        split: str | Sequence[str] | None = None,
        kind: Kind = "mintime",
        *,
        feature: str | None = None,
        options: SampleOptions = SampleOptions(),
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 256,
        rank: int | None = None,
        world_size: int | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.uri, self.kind, self.options = uri, kind, options
        self.splits = None if split is None else ([split] if isinstance(split, str) else list(split))
        self.seed, self.shuffle, self.shuffle_buffer = seed, shuffle, max(1, shuffle_buffer)
        self.rank, self.world_size = rank, world_size
        self.storage_options = dict(storage_options or {})
        self.epoch = 0
        self.dropped: dict[str, int] = {}  # videos a published pipeline's rule drops, by kind (this process)
        fs, root = fsio.open_fs(uri, self.storage_options)
        self._state: OutputState = read_state(fs, root)
        self._by_shard = self._files_by_shard()
        self.stored_columns = self._stored_face_columns(fs, root)
        self.feature = feature or self._default_feature()
        self.columns = self._needed_columns()

    # -- public

    def set_epoch(self, epoch: int) -> None:
        """Shard order and shuffle buffer depend on (seed, epoch): same pair, same order."""
        self.epoch = int(epoch)

    @property
    def shards(self) -> list[int]:
        """Committed shards holding rows of the requested splits, in shard order."""
        return sorted(self._by_shard)

    def shard_order(self, epoch: int | None = None) -> list[int]:
        """This epoch's shard order, before dealing them to consumers."""
        shards = self.shards
        if not self.shuffle:
            return shards
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        return [shards[i] for i in rng.permutation(len(shards))]

    def my_shards(self) -> list[int]:
        """The shards this consumer (rank × worker) reads this epoch."""
        index, count = consumer_slot(self.rank, self.world_size)
        return self.shard_order()[index::count]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        index, _ = consumer_slot(self.rank, self.world_size)
        samples = (s for shard in self.my_shards() for s in self._shard_samples(shard))
        if not self.shuffle:
            yield from samples
            return
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        buffer: list[dict[str, Any]] = []
        for sample in samples:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            slot = int(rng.integers(len(buffer)))
            yield buffer[slot]
            buffer[slot] = sample
        for slot in rng.permutation(len(buffer)):
            yield buffer[int(slot)]

    # -- reading

    def _files_by_shard(self) -> dict[int, dict[str, list[dict[str, Any]]]]:
        by_shard: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for table in ("videos", "faces", "identities"):
            for entry in self._state.files(table, self.splits):
                by_shard.setdefault(entry["shard"], {}).setdefault(table, []).append(entry)
        return {shard: files for shard, files in by_shard.items() if files.get("videos")}

    def _stored_face_columns(self, fs: Any, root: str) -> list[str]:
        for files in self._by_shard.values():
            for entry in files.get("faces", []):
                with fs.open(locate(fs, root, entry), "rb") as handle:
                    return pq.read_schema(handle).names
        return []

    def _default_feature(self) -> str:
        if self.kind == "mintime":  # tokens first (what MINTIME consumes), pooled vectors work too
            return (
                "emb_rgb"
                if "emb_rgb" in self.stored_columns and "tokens" not in self.stored_columns
                else "tokens"
            )
        if self.kind == "clips":
            return "crop" if "crop" in self.stored_columns else "emb_rgb"
        return "emb_rgb"

    def _needed_columns(self) -> list[str]:
        needed = {
            "mintime": [self.feature],
            "megatron": ["emb_rgb", "emb_depth"],
            "megatron_identity": ["emb_rgb", "emb_depth"],
            "clips": [self.feature],
        }
        wanted = needed[self.kind]
        missing = [c for c in wanted if c not in self.stored_columns]
        if missing and self.stored_columns:
            raise MissingColumnsError(
                f"{self.uri}: the {self.kind} samples need faces column(s) {', '.join(missing)}, which"
                f" this build did not store; {how_to_add(missing)}"
            )
        return ["video_id", "frame", "face", "identity", "size_bucket", *wanted]

    def _read(self, shard: int, table: str, columns: list[str]) -> pa.Table | None:
        """One table's committed files of one shard (usually one file), only `columns`."""
        fs, root = fsio.open_fs(self.uri, self.storage_options)
        entries = self._by_shard[shard].get(table, [])
        for attempt in range(3):
            try:
                parts = [_read_file(fs, root, entry, columns) for entry in entries]
                return pa.concat_tables(parts) if parts else None
            except FileNotFoundError:
                # Published (staged → final) or replaced since the snapshot: look again.
                if attempt == 2:
                    raise
                fresh = read_state(fs, root)
                entries = [e for e in fresh.files(table, self.splits) if e["shard"] == shard]
        return None

    def _shard_samples(self, shard: int) -> Iterator[dict[str, Any]]:
        videos = self._read(shard, "videos", ["video_id", "label", "method"])
        faces = self._read(shard, "faces", self.columns)
        if videos is None or faces is None or faces.num_rows == 0:
            return
        ranks = self._identity_ranks(shard)
        identity_labels = self._identity_labels(shard) if self.options.identity_labels else None
        video_ids = videos["video_id"].to_pylist()
        labels = videos["label"].to_numpy(zero_copy_only=False)
        methods = videos["method"].to_pylist()
        face_video = faces["video_id"].combine_chunks().dictionary_encode()
        codes = face_video.indices.to_numpy(zero_copy_only=False)
        names = face_video.dictionary.to_pylist()
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
        rows_of = {names[k]: order[bounds[k] : bounds[k + 1]] for k in range(len(names))}
        arrays = {c: _column_numpy(faces[c]) for c in self.columns if c not in ("video_id",)}
        for video_id, label, method in zip(video_ids, labels, methods, strict=True):
            rows = rows_of.get(video_id)
            if rows is None or len(rows) == 0:
                if self.kind == "megatron":  # Megatron drops a video without a face in frame 0 too
                    self.dropped["megatron"] = self.dropped.get("megatron", 0) + 1
                continue  # no face to learn from (no_faces / error rows)
            view = {
                c: a[rows] if not isinstance(a, list) else [a[r] for r in rows] for c, a in arrays.items()
            }
            sample = self._build(view, int(label), ranks.get(video_id), video_id)
            if sample is None:
                continue
            if identity_labels is not None and self.kind == "mintime":
                order = identity_order(view["identity"], ranks.get(video_id))
                known = identity_labels.get(video_id, {})
                slot_labels = [-1] + [int(known.get(i, label)) for i in order]
                sample["identity_label"] = torch.tensor(slot_labels)[sample["identity"]]
            sample["video_id"] = video_id
            sample["method"] = method or ""
            yield sample

    def _identity_labels(self, shard: int) -> dict[str, dict[int, bool]]:
        """Per video, identity → manipulated, where a source-aware build labelled it."""
        table = self._read(shard, "identities", ["video_id", "identity", "manipulated"])
        labels: dict[str, dict[int, bool]] = {}
        if table is None:
            return labels
        columns = (table[c].to_pylist() for c in ("video_id", "identity", "manipulated"))
        for video_id, identity, manipulated in zip(*columns, strict=True):
            if manipulated is not None:
                labels.setdefault(video_id, {})[identity] = manipulated
        return labels

    def _identity_ranks(self, shard: int) -> dict[str, dict[int, int]]:
        table = self._read(shard, "identities", ["video_id", "identity", "rank"])
        ranks: dict[str, dict[int, int]] = {}
        if table is None:
            return ranks
        for video_id, identity, rank in zip(
            table["video_id"].to_pylist(),
            table["identity"].to_pylist(),
            table["rank"].to_pylist(),
            strict=True,
        ):
            ranks.setdefault(video_id, {})[identity] = identity if rank is None else rank
        return ranks

    def _build(
        self, view: dict[str, Any], label: int, ranks: dict[int, int] | None, video_id: str = ""
    ) -> dict[str, Any] | None:
        opts = self.options
        if self.kind == "mintime":
            s = mintime_sample(
                view["frame"], view["identity"], view["size_bucket"], view[self.feature], label,
                ranks, opts.num_frames, opts.max_identities, opts.index_of(video_id), view["face"],
            )  # fmt: skip
            sample = {
                "features": _torch(s.features),
                "size_bucket": _torch(s.size_bucket),
                "identity": _torch(s.identity),
                "positions": _torch(s.positions),
                "mask": _torch(s.mask),
                "identities_mask": _torch(s.identities_mask),
                # which faces the slots hold: (frame, face) of each, -1 on padding
                "frame": _torch(np.where(s.mask, view["frame"][s.rows], -1).astype(np.int64)),
                "face": _torch(np.where(s.mask, view["face"][s.rows], -1).astype(np.int64)),
                "index": torch.tensor(s.index),
                "label": torch.tensor(s.label),
            }
            if opts.mintime_forward:
                sample["forward"] = mintime_forward(s)
            return sample
        if self.kind == "megatron":
            m = megatron_sample(
                view["frame"], view["face"], view["emb_rgb"], view["emb_depth"], label, opts.megatron_length
            )
            if m is None:
                self.dropped["megatron"] = self.dropped.get("megatron", 0) + 1
                return None
            return {"rgb": _torch(m.rgb), "depth": _torch(m.depth), "label": torch.tensor(m.label)}
        if self.kind == "megatron_identity":
            m = megatron_identity_sample(
                view["frame"], view["identity"], view["emb_rgb"], view["emb_depth"], label,
                ranks, opts.megatron_length,
            )  # fmt: skip
            return {
                "rgb": _torch(m.rgb),
                "depth": _torch(m.depth),
                "mask": _torch(m.mask),
                "label": torch.tensor(m.label),
            }
        cut = deepfakebench_clip_rows if opts.clip_rule == "deepfakebench" else clip_rows
        rows = cut(view["frame"], view["face"], opts.clip_frames, opts.clip)
        if len(rows) == 0:
            return None
        values = view[self.feature]
        if isinstance(values, list):
            clips = _stack_crops([_decode(values[r]) for r in rows.reshape(-1)], opts.clip_size)
        else:
            clips = values[rows.reshape(-1)]
        return {"clips": _torch(clips.reshape(*rows.shape, *clips.shape[1:])), "label": torch.tensor(label)}


def mintime_forward(s: MintimeSample) -> dict[str, torch.Tensor]:
    """The keyword arguments of MINTIME's `SizeInvariantTimeSformer.forward`, for one sample.

    `x` (F, C, h, w) float32 (its backbone's output layout; 49 tokens are the 7 × 7 grid, row-major
    as `rearrange('b f c h w -> b (f h w) c')` reads them), `mask` bool (F,) False on padding,
    `identities_mask` bool (F, F), `size_embedding` int32 (F,), `positions` int64 (F·P + 1,) with CLS's
    0 first. Batched by the DataLoader: `model(**batch["forward"])`.
    """
    f, p, c = s.features.shape
    side = math.isqrt(p)
    h, w = (side, side) if side * side == p else (p, 1)
    x = s.features.astype(np.float32).reshape(f, h, w, c).transpose(0, 3, 1, 2)
    return {
        "x": _torch(x),
        "mask": _torch(s.mask),
        "identities_mask": _torch(s.identities_mask),
        "size_embedding": _torch(s.size_bucket.astype(np.int32)),
        "positions": _torch(s.forward_positions),
    }


def _read_file(fs: Any, root: str, entry: dict[str, Any], columns: list[str]) -> pa.Table:
    path = locate(fs, root, entry)
    if fsio.is_local(fs):  # pyarrow's own reader of a local path is faster than a Python file object
        return pq.read_table(path, columns=columns)
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle, columns=columns)


def _column_numpy(column: pa.ChunkedArray) -> Any:
    """One Arrow → numpy conversion per column and shard (binary columns stay a list of bytes)."""
    if pa.types.is_fixed_size_list(column.type):
        return fixed_list_to_numpy(column)
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return column.to_pylist()
    return column.to_numpy()


def _decode(data: bytes | None) -> np.ndarray:
    import cv2

    if data is None:
        raise StorageError("a face row has no stored crop")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _stack_crops(crops: list[np.ndarray], size: int | None) -> np.ndarray:
    """One clip array from decoded crops: each resized to size×size first (cv2 bicubic, as
    DeepfakeBench's loader does), or, with `size=None`, a clear error when their sizes differ."""
    if size is not None:
        import cv2

        crops = [
            c if c.shape[:2] == (size, size) else cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC)
            for c in crops
        ]
    shapes = sorted({c.shape for c in crops})
    if len(shapes) > 1:
        raise StorageError(
            f"stored crops of {len(shapes)} sizes ({shapes[0]} … {shapes[-1]}) cannot form one clip: set"
            " SampleOptions(clip_size=S) to resize them (DeepfakeBench uses 256), or build with"
            " --set crop.store=pad:S so every stored crop has one size"
        )
    return np.stack(crops)


def _torch(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only views of Arrow buffers
        return torch.from_numpy(np.ascontiguousarray(array))
