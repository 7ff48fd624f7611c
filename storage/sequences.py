"""Training samples of one video, built from its committed face rows (SPEC §8). Pure numpy, no torch.

Three consumers of the cache:
  * MINTIME: up to `max_identities` identities in rank order share `num_frames` slots
    (`assign_slots`); each slot is one face (49 tokens or one pooled vector) with its size bucket,
    identity index and temporal positions; padding slots are marked in `mask` so the model can
    mask them (MINTIME's own loader never did).
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

    An identity short of its quota (not the last) passes its unused slots to the next one; one
    with more faces than its quota keeps the surplus as "available". Slots still missing are taken
    from the available surplus in rank order, and what remains pads the last identity (so its
    slot count may exceed its faces: the sample builder pads those slots).
    """
    counts = [int(c) for c in face_counts[:max_identities]]
    if not counts:
        return []
    if any(c < 1 for c in counts):
        raise ValueError(f"every identity needs at least one face, got {face_counts}")
    quotas = slot_quotas(num_frames, len(counts))
    taken, available, passed = [], [], 0
    for index, (count, quota) in enumerate(zip(counts, quotas, strict=True)):
        budget = quota + passed
        last = index == len(counts) - 1
        take = min(count, budget)
        passed = 0 if last else budget - take
        taken.append(take)
        available.append(count - take)
    missing = num_frames - sum(taken)
    for index, extra in enumerate(available):
        give = min(extra, missing)
        taken[index] += give
        missing -= give
    taken[-1] += missing
    return taken


def linspace_picks(n: int, k: int) -> np.ndarray:
    """`k` indices into `n` temporally ordered faces, `round(linspace(0, n-1, k))` (all n when k ≥ n).

    Computed as numpy's linspace does (i · step, rounded half to even) without its overhead: this
    runs once per identity per sample.
    """
    if k >= n:
        return np.arange(n)
    if k == 1:
        return np.zeros(1, np.int64)
    return np.rint(np.arange(k) * ((n - 1) / (k - 1))).astype(np.int64)


@dataclass
class MintimeSample:
    """One MINTIME input: F slots, each a face of P tokens (P=49 tokens, or 1 pooled vector).

    `size_bucket` and `identity` use 0 for padding (real identities are 1…K in rank order);
    `positions` are temporal position ids per token (1…, CLS takes 0, padding 0); `mask` is True on
    real faces. `rows` gives each slot's index into the video's face rows (-1 for padding).
    """

    features: np.ndarray  # (F, P, C)
    size_bucket: np.ndarray  # (F,) int64
    identity: np.ndarray  # (F,) int64
    positions: np.ndarray  # (F, P) int64
    mask: np.ndarray  # (F,) bool
    rows: np.ndarray  # (F,) int64
    label: int


def identity_order(identity: np.ndarray, identity_rank: dict[int, int] | None = None) -> list[int]:
    """The assigned identities (≠ -1) of a video, best rank first (default: by id)."""
    present = sorted(i for i in set(identity.tolist()) if i >= 0)
    if identity_rank is None:
        return present
    return sorted(present, key=lambda i: (identity_rank.get(i, len(identity_rank) + i), i))


def mintime_sample(
    frame: np.ndarray,
    identity: np.ndarray,
    size_bucket: np.ndarray,
    features: np.ndarray,
    label: int,
    identity_rank: dict[int, int] | None = None,
    num_frames: int = 16,
    max_identities: int = 2,
) -> MintimeSample:
    """MINTIME's identity-aware sequence of one video's faces (SPEC §8).

    `features` is (N, P, C) tokens or (N, C) pooled vectors of the video's N face rows; faces of
    unassigned identity (-1) are left out. A video without an assigned face gives an all-padding
    sample (every slot masked).
    """
    feats = features if features.ndim == 3 else features[:, None, :]
    n_tokens, channels = feats.shape[1], feats.shape[2]
    order = identity_order(identity, identity_rank)[:max_identities]
    members = [np.flatnonzero(identity == i) for i in order]
    members = [m[np.argsort(frame[m], kind="stable")] for m in members]
    slots = assign_slots([len(m) for m in members], num_frames, max_identities)

    rows = np.full(num_frames, -1, np.int64)
    ident = np.zeros(num_frames, np.int64)
    cursor = 0
    for k, (member, n_slots) in enumerate(zip(members, slots, strict=True)):
        chosen = member[linspace_picks(len(member), n_slots)]
        rows[cursor : cursor + len(chosen)] = chosen
        ident[cursor : cursor + n_slots] = k + 1
        cursor += n_slots
    mask = rows >= 0
    ident[~mask] = 0

    out = np.zeros((num_frames, n_tokens, channels), feats.dtype)
    out[mask] = feats[rows[mask]]
    sizes = np.zeros(num_frames, np.int64)
    sizes[mask] = size_bucket[rows[mask]]
    positions = np.zeros((num_frames, n_tokens), np.int64)
    if mask.any():
        frames = frame[rows[mask]]
        frame_rank = np.unique(frames, return_inverse=True)[1] + 1  # faces of one frame share a rank
        positions[mask] = (frame_rank[:, None] - 1) * n_tokens + 1 + np.arange(n_tokens)[None, :]
    return MintimeSample(out, sizes, ident, positions, mask, rows, int(label))


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
