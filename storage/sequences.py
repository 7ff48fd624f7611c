"""Training samples of one video, built from its committed face rows (SPEC §8). Pure numpy, no torch.

Three consumers of the cache:
  * MINTIME: up to `max_identities` identities in rank order share `num_frames` slots
    (`assign_slots`, MINTIME's rule); faces are picked within an identity with the parity of the
    video's dataset index (`linspace_picks`); identity 0 is completed with unassigned faces. Each slot
    is one face (49 tokens or one pooled vector) with its size bucket, identity index, temporal
    positions and identity-mask block; padding slots are marked in `mask` so the model can mask
    them (MINTIME's own loader never did).
  * Megatron (`megatron_sample`): its own rule, the first face of frames 0…N-1, RGB and depth
    embeddings [N, D] float32 plus its positional encoding, label 1 = original; a video without a face
    in one of those frames is dropped. `megatron_identity_sample` is ours: N consecutive faces of the
    top identity, padded and masked.
  * DeepfakeBench / StA: 32 uniformly spaced faces cut into clips of 8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# SPEC §8: slot quotas by the number of identities, as fractions of F (each int()-ed).
QUOTA_FRACTIONS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (1 / 2, 1 / 2),
    3: (1 / 3, 1 / 3, 1 / 4),
    4: (1 / 3, 1 / 3, 1 / 8, 1 / 8),
}


def slot_quotas(num_frames: int, n_identities: int) -> list[int]:
    """MINTIME's initial quotas: F for one identity, F/2 each for two, F/3, F/3, F/4 for three…"""
    if n_identities not in QUOTA_FRACTIONS:
        raise ValueError(f"MINTIME quotas exist for 1…4 identities, got {n_identities}")
    return [int(num_frames * fraction) for fraction in QUOTA_FRACTIONS[n_identities]]


def assign_slots(face_counts: list[int], num_frames: int = 16, max_identities: int = 2) -> list[int]:
    """Slots per identity (rank order, at most `max_identities`), summing to exactly `num_frames`.

    MINTIME's rule (SPEC §8 step 2): one identity takes every slot. Otherwise, in rank order, an
    identity short of its quota (not the last) adds its shortfall to the next identity's face *count*,
    before that one is capped at its own quota; a count over its quota is capped and the excess kept
    as "available". Slots still missing are taken from the available excess in rank order from
    identity 0, and what remains pads the last identity. A grown count can exceed the faces an
    identity has: the sample builder pads those slots.
    """
    counts = [int(c) for c in face_counts[:max_identities]]
    if not counts:
        return []
    if any(c < 1 for c in counts):
        raise ValueError(f"every identity needs at least one face, got {face_counts}")
    if len(counts) == 1:
        return [num_frames]
    quotas = slot_quotas(num_frames, len(counts))
    available = []
    for i, quota in enumerate(quotas):
        if counts[i] < quota and i < len(counts) - 1:
            counts[i + 1] += quota - counts[i]
            available.append(0)
        elif counts[i] > quota:
            available.append(counts[i] - quota)
            counts[i] = quota
        else:
            available.append(0)
    missing = num_frames - sum(counts)
    for i, extra in enumerate(available):
        if missing <= 0:
            break
        give = min(extra, missing)
        counts[i] += give
        missing -= give
    counts[-1] += max(missing, 0)
    return counts


def linspace_picks(n: int, k: int, index: int = 0) -> np.ndarray:
    """`k` of `n` temporally ordered faces, MINTIME's alternate uniform picks (all n when k ≥ n).

    `round(linspace(1, n-1, k))` at an even dataset `index`, `round(linspace(0, n-2, k))` at an odd
    one (numpy's round: half to even): two neighbouring videos never start at the same offset.
    """
    if k >= n:
        return np.arange(n)
    start, stop = (0, n - 2) if index % 2 else (1, n - 1)
    return np.rint(np.linspace(start, stop, k)).astype(np.int64)


@dataclass
class MintimeSample:
    """One MINTIME input: F slots, each a face of P tokens (P=49 tokens, or 1 pooled vector).

    `size_bucket` and `identity` use 0 for padding (real identities are 1…K in rank order); `mask` is
    True on real faces. `positions` are MINTIME's token position ids, (F, P): the slot whose frame has
    rank r among the sample's distinct frames gets (r−1)·P+1 … r·P, a padding slot the positions of
    the largest frame read before it (its forward's `positions` is these flattened after a 0 for CLS:
    `forward_positions`). `identities_mask` (F, F) is True where two slots belong to one identity's
    block of slots. `rows` gives each slot's index into the video's face rows (-1 for padding).
    """

    features: np.ndarray  # (F, P, C)
    size_bucket: np.ndarray  # (F,) int64
    identity: np.ndarray  # (F,) int64
    positions: np.ndarray  # (F, P) int64
    mask: np.ndarray  # (F,) bool
    rows: np.ndarray  # (F,) int64
    label: int
    identities_mask: np.ndarray | None = None  # (F, F) bool
    index: int = 0  # the dataset index whose parity chose the picks

    @property
    def forward_positions(self) -> np.ndarray:
        """(F·P + 1,) int64: CLS's 0 first, then every slot's token positions (MINTIME's `positions`)."""
        return np.concatenate([np.zeros(1, np.int64), self.positions.reshape(-1)])


def identity_order(identity: np.ndarray, identity_rank: dict[int, int] | None = None) -> list[int]:
    """The assigned identities (≠ -1) of a video, best rank first (default: by id)."""
    present = sorted(i for i in set(identity.tolist()) if i >= 0)
    if identity_rank is None:
        return present
    return sorted(present, key=lambda i: (identity_rank.get(i, len(identity_rank) + i), i))


def mintime_members(
    frame: np.ndarray,
    identity: np.ndarray,
    identity_rank: dict[int, int] | None = None,
    max_identities: int = 2,
    face: np.ndarray | None = None,
) -> tuple[list[np.ndarray], list[int]]:
    """Face rows of each kept identity in frame order, and the face counts the slot rule sees.

    SPEC §8 steps 1 and 3: the first `max_identities` identities by rank; when no face has an identity,
    all the video's faces are one identity. Identity 0 is then completed with faces no identity took
    (identity -1): for each frame where it has no face, the first such face of that frame (lowest
    `face` index, else row order; MINTIME took the first in its directory listing). The counts are taken before that
    completion, as MINTIME counts the identity's own folder.
    """
    within = np.arange(len(frame)) if face is None else face
    rows = np.lexsort((np.arange(len(frame)), within, frame))  # frame order, then face index
    order = identity_order(identity, identity_rank)[:max_identities]
    if not order:
        return [rows], [len(rows)]
    members = [rows[identity[rows] == i] for i in order]
    counts = [len(m) for m in members]
    unassigned = rows[identity[rows] == -1]
    if len(unassigned):
        first = unassigned[np.unique(frame[unassigned], return_index=True)[1]]
        extra = first[~np.isin(frame[first], frame[members[0]])]
        if len(extra):
            merged = np.concatenate([members[0], extra])
            members[0] = merged[np.lexsort((merged, within[merged], frame[merged]))]
    return members, counts


def mintime_sample(
    frame: np.ndarray,
    identity: np.ndarray,
    size_bucket: np.ndarray,
    features: np.ndarray,
    label: int,
    identity_rank: dict[int, int] | None = None,
    num_frames: int = 16,
    max_identities: int = 2,
    index: int = 0,
    face: np.ndarray | None = None,
) -> MintimeSample:
    """MINTIME's identity-aware sequence of one video's faces (SPEC §8), as its loader builds it.

    `features` is (N, P, C) tokens or (N, C) pooled vectors of the video's N face rows. `index` is the
    video's dataset index: its parity picks the faces within an identity (`linspace_picks`). `face`
    (the rows' face index in their frame) orders faces of one frame; without it, row order does. Padding
    slots (an identity given more slots than faces) hold zeros and are False in `mask`.
    """
    feats = features if features.ndim == 3 else features[:, None, :]
    n_tokens, channels = feats.shape[1], feats.shape[2]
    members, counts = mintime_members(frame, identity, identity_rank, max_identities, face)
    slots = assign_slots(counts, num_frames, max_identities)

    rows = np.full(num_frames, -1, np.int64)
    ident = np.zeros(num_frames, np.int64)
    slot_frame = np.zeros(num_frames, np.int64)
    identities_mask = np.zeros((num_frames, num_frames), bool)
    cursor, latest = 0, None  # latest: the largest frame of a face read so far
    for k, (member, n_slots) in enumerate(zip(members, slots, strict=True)):
        chosen = member[linspace_picks(len(member), n_slots, index)]
        rows[cursor : cursor + len(chosen)] = chosen
        ident[cursor : cursor + len(chosen)] = k + 1
        if len(chosen):
            top = int(frame[chosen].max())
            latest = top if latest is None else max(latest, top)
        slot_frame[cursor : cursor + len(chosen)] = frame[chosen]
        # a padding slot takes the largest frame read so far (0 before any), as MINTIME's loader does
        slot_frame[cursor + len(chosen) : cursor + n_slots] = 0 if latest is None else latest
        identities_mask[cursor : cursor + n_slots, cursor : cursor + n_slots] = True
        cursor += n_slots
    mask = rows >= 0

    out = np.zeros((num_frames, n_tokens, channels), feats.dtype)
    out[mask] = feats[rows[mask]]
    sizes = np.zeros(num_frames, np.int64)
    sizes[mask] = size_bucket[rows[mask]]
    frame_rank = np.unique(slot_frame, return_inverse=True)[1].reshape(-1) + 1  # a frame's faces share it
    positions = (frame_rank[:, None] - 1) * n_tokens + 1 + np.arange(n_tokens)[None, :]
    return MintimeSample(out, sizes, ident, positions, mask, rows, int(label), identities_mask, int(index))


@dataclass
class MegatronSample:
    """N faces: RGB and depth embeddings, `mask` False on padding (never in Megatron's own samples)."""

    rgb: np.ndarray  # (N, D)
    depth: np.ndarray  # (N, D)
    mask: np.ndarray  # (N,) bool
    rows: np.ndarray  # (N,) int64, -1 on padding
    label: int


def megatron_positional_encoding(length: int, channels: int) -> np.ndarray:
    """(length, channels) float32 sinusoids Megatron's `PositionalEncoding` adds to each embedding
    sequence in its collate (sin on even channels, cos on odd, wavelengths 10000^(2i/channels))."""
    step = -np.log(np.float32(10000.0)) / np.float32(channels)  # float32 throughout, as torch computes it
    div = np.exp(np.arange(0, channels, 2, dtype=np.float32) * step)
    angle = np.arange(length, dtype=np.float32)[:, None] * div[None, :]
    pe = np.zeros((length, channels), np.float32)
    pe[:, 0::2] = np.sin(angle)
    pe[:, 1::2] = np.cos(angle[:, : channels // 2])
    return pe


def megatron_sample(
    frame: np.ndarray,
    face: np.ndarray,
    emb_rgb: np.ndarray,
    emb_depth: np.ndarray,
    label: int,
    length: int = 20,
    positional: bool = True,
) -> MegatronSample | None:
    """Megatron's sample of one video (SPEC §8), or None where Megatron drops the video.

    Megatron reads frames 0…N-1 and keeps the first face dlib returns in each (`face == 0` under
    `detect.keep=first`), stopping at the first frame without one; fewer than N faces and the video is
    dropped. Embeddings become float32 (its model fails on float16) and, with `positional`, get the
    sinusoids its collate adds. `label` is ours (1 = fake); the sample's is Megatron's, 1 = original.
    """
    first = np.flatnonzero(face == 0)
    first = first[np.argsort(frame[first], kind="stable")]
    rows = first[frame[first] < length]
    if len(rows) < length or not np.array_equal(frame[rows], np.arange(length)):
        return None
    rgb = emb_rgb[rows].astype(np.float32)
    depth = emb_depth[rows].astype(np.float32)
    if positional:
        rgb += megatron_positional_encoding(length, rgb.shape[1])
        depth += megatron_positional_encoding(length, depth.shape[1])
    return MegatronSample(rgb, depth, np.ones(length, bool), rows.astype(np.int64), 1 - int(label))


def megatron_identity_sample(
    frame: np.ndarray,
    identity: np.ndarray,
    emb_rgb: np.ndarray,
    emb_depth: np.ndarray,
    label: int,
    identity_rank: dict[int, int] | None = None,
    length: int = 20,
    start: int = 0,
) -> MegatronSample:
    """Ours (not Megatron's rule): faces `start…start+length` (temporal order) of the top-ranked
    identity, padded at the end and masked; the label stays ours (1 = fake).

    Without identities (every face -1) the video's faces in temporal order are used: Megatron keeps
    one face per frame and never clustered identities.
    """
    order = identity_order(identity, identity_rank)
    member = np.flatnonzero(identity == order[0]) if order else np.arange(len(frame))
    member = member[np.argsort(frame[member], kind="stable")]
    start = max(0, min(start, len(member) - length)) if len(member) > length else 0
    chosen = member[start : start + length]
    rows = np.full(length, -1, np.int64)
    rows[: len(chosen)] = chosen
    mask = rows >= 0
    rgb = np.zeros((length, emb_rgb.shape[1]), emb_rgb.dtype)
    depth = np.zeros((length, emb_depth.shape[1]), emb_depth.dtype)
    rgb[mask], depth[mask] = emb_rgb[chosen], emb_depth[chosen]
    return MegatronSample(rgb, depth, mask, rows, int(label))


def clip_rows(frame: np.ndarray, face: np.ndarray, n_frames: int = 32, clip: int = 8) -> np.ndarray:
    """(n_frames // clip, clip) face-row indices: `n_frames` uniformly spaced frames in clips of `clip`.

    One face per frame (the largest, `face == 0`), as DeepfakeBench keeps; spacing is
    `linspace(0, n-1, n_frames, dtype=int)` over those faces, repeating faces of short videos.
    An empty array (0, clip) when the video has no face.
    """
    if n_frames % clip:
        raise ValueError(f"n_frames ({n_frames}) must be a multiple of clip ({clip})")
    largest = np.flatnonzero(face == 0)
    largest = largest[np.argsort(frame[largest], kind="stable")]
    if len(largest) == 0:
        return np.zeros((0, clip), np.int64)
    picks = np.linspace(0, len(largest) - 1, n_frames, dtype=int)
    return largest[picks].reshape(n_frames // clip, clip)


def deepfakebench_clip_rows(
    frame: np.ndarray, face: np.ndarray, frame_num: int = 32, clip: int = 8
) -> np.ndarray:
    """(num_clips, clip) face-row indices as DeepfakeBench's test-mode loader cuts a video's frames.

    Its faces (the largest per frame, in frame order) are what its preprocessing kept; the first
    `frame_num` of them are used; `num_clips = n // clip` clips of `clip` consecutive faces start at
    `i · ((n − clip) // (num_clips − 1))` (at 0 for one clip), so no face repeats and the clips
    spread over the video. A video with fewer than `clip` faces gives (0, clip): it is skipped.
    Training draws each start at random inside its stride (the sampler's, not the cache's).
    """
    largest = np.flatnonzero(face == 0)
    largest = largest[np.argsort(frame[largest], kind="stable")][:frame_num]
    n = len(largest)
    num_clips = n // clip
    if num_clips == 0:
        return np.zeros((0, clip), np.int64)
    step = (n - clip) // (num_clips - 1) if num_clips > 1 else 0
    starts = np.arange(num_clips) * step
    return largest[starts[:, None] + np.arange(clip)]
