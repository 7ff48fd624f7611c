"""SPEC §8 training sequences: MINTIME slot assignment and samples, Megatron, DeepfakeBench clips."""

from __future__ import annotations

import numpy as np
import pytest

from faceshard.storage.sequences import (
    assign_slots,
    clip_rows,
    megatron_identity_sample,
    mintime_sample,
    slot_quotas,
)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [([12, 4], [12, 4]), ([3, 20], [3, 13]), ([3, 6], [3, 13])],  # SPEC §8's worked examples
)  # MINTIME's own rule on random cases and 1–5 identities: tests/test_mintime_rules.py
def test_assign_slots_matches_the_spec_examples(counts: list[int], expected: list[int]) -> None:
    assert assign_slots(counts, num_frames=16, max_identities=2) == expected


def test_quotas_are_mintime_s() -> None:
    assert slot_quotas(16, 3) == [5, 5, 4]
    assert slot_quotas(16, 4) == [5, 5, 2, 2]
    with pytest.raises(ValueError, match="1…4"):
        slot_quotas(16, 5)


def video(identity_frames: dict[int, list[int]], tokens: int = 49, channels: int = 4):
    """Face rows of one video (shuffled): identity → frames; features encode the row index."""
    frame = np.array([f for frames in identity_frames.values() for f in frames], np.int32)
    identity = np.array([i for i, frames in identity_frames.items() for _ in frames], np.int32)
    perm = np.random.default_rng(1).permutation(len(frame))
    frame, identity = frame[perm], identity[perm]
    size = (np.arange(len(frame)) % 20 + 1).astype(np.int8)
    feats = np.broadcast_to(
        np.arange(len(frame), dtype=np.float32)[:, None, None], (len(frame), tokens, channels)
    )
    return frame, identity, size, np.ascontiguousarray(feats)


def test_mintime_sample_orders_identities_by_rank_and_picks_linspace_in_time() -> None:
    # identity 7 is ranked first, identity 3 second; 12 faces of 7 and 4 faces of 3 → 12, 4 slots
    frames = {3: [0, 10, 20, 30], 7: list(range(0, 120, 5))}  # 24 faces of identity 7
    frame, identity, size, feats = video(frames)
    s = mintime_sample(frame, identity, size, feats, label=1, identity_rank={7: 0, 3: 1})
    assert s.mask.all() and s.label == 1
    assert s.identity.tolist() == [1] * 12 + [2] * 4
    first = frame[s.rows[:12]]
    expected = np.array(frames[7])[np.round(np.linspace(1, 23, 12)).astype(int)]  # index 0: even
    assert first.tolist() == expected.tolist()
    assert frame[s.rows[12:]].tolist() == [0, 10, 20, 30]
    assert np.array_equal(s.features[:, 0, 0], s.rows.astype(np.float32))
    assert np.array_equal(s.size_bucket, size[s.rows])


def test_mintime_positions_share_a_frame_and_padding_takes_the_latest_frame() -> None:
    frame, identity, size, feats = video({0: [0, 10, 20], 1: [10, 30]}, tokens=49)
    s = mintime_sample(frame, identity, size, feats, label=0)
    assert s.mask.tolist() == [True] * 3 + [True] * 2 + [False] * 11
    # frames present: 0, 10, 20, 30 → ranks 1…4; slot of rank r: (r-1)·49+1 … r·49
    ranks = {0: 1, 10: 2, 20: 3, 30: 4}
    for slot in range(5):
        r = ranks[int(frame[s.rows[slot]])]
        assert s.positions[slot].tolist() == list(range((r - 1) * 49 + 1, r * 49 + 1))
    assert s.positions[1].tolist() == s.positions[3].tolist()  # the two faces of frame 10
    # padding slots repeat the largest frame read before them (30: rank 4), as MINTIME's loader does
    assert (s.positions[~s.mask] == np.arange(3 * 49 + 1, 4 * 49 + 1)).all() and s.positions.min() == 1
    assert s.forward_positions[0] == 0 and s.forward_positions.shape == (16 * 49 + 1,)
    assert (s.identity[~s.mask] == 0).all() and (s.size_bucket[~s.mask] == 0).all()
    assert (s.features[~s.mask] == 0).all() and (s.rows[~s.mask] == -1).all()


def test_every_mintime_sample_marks_exactly_its_padding() -> None:
    rng = np.random.default_rng(2)
    for _ in range(300):
        n_ids = int(rng.integers(1, 4))
        frames = {
            i: sorted(rng.choice(200, size=int(rng.integers(1, 30)), replace=False).tolist())
            for i in range(n_ids)
        }
        frame, identity, size, feats = video(frames, tokens=1, channels=2)
        unassigned = rng.random(len(frame)) < 0.1
        identity = np.where(unassigned, -1, identity)
        if not (identity >= 0).any():
            continue
        s = mintime_sample(frame, identity, size, feats[:, 0, :], label=0, max_identities=2)
        real = s.rows >= 0
        assert np.array_equal(s.mask, real)
        kept = sorted(set(identity[identity >= 0].tolist()))[:2]
        entered = identity[s.rows[real]]
        assert np.isin(entered, [*kept, -1]).all()  # identities past the second never enter
        assert (s.identity[real][entered == -1] == 1).all()  # unassigned faces complete identity 0 only
        assert len(set(s.rows[real].tolist())) == int(real.sum())  # no face twice


def test_pooled_features_give_one_token_per_slot() -> None:
    frame, identity, size, feats = video({0: list(range(20))}, tokens=1, channels=3)
    s = mintime_sample(frame, identity, size, feats[:, 0, :], label=0)
    assert s.features.shape == (16, 1, 3) and s.positions[:, 0].tolist() == list(range(1, 17))


def test_megatron_identity_sample_takes_consecutive_faces_of_the_top_identity() -> None:
    frame = np.array([5, 1, 2, 3, 4, 0, 9, 8], np.int32)
    identity = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.int32)
    rgb = np.arange(8, dtype=np.float16)[:, None].repeat(3, 1)
    depth = -rgb
    m = megatron_identity_sample(frame, identity, rgb, depth, label=1, identity_rank={1: 0, 0: 1}, length=4)
    assert frame[m.rows].tolist() == [0, 1, 2, 3] and m.mask.all()
    assert np.array_equal(m.rgb[:, 0], m.rows.astype(np.float16)) and np.array_equal(m.depth, -m.rgb)
    short = megatron_identity_sample(
        frame, identity, rgb, depth, label=0, identity_rank={1: 1, 0: 0}, length=4
    )
    assert frame[short.rows[:2]].tolist() == [8, 9] and short.mask.tolist() == [True, True, False, False]
    assert (short.rgb[2:] == 0).all()


def test_clip_rows_are_32_uniform_frames_in_clips_of_8() -> None:
    n = 100
    frame = np.arange(n, dtype=np.int32)[::-1].copy()
    face = np.zeros(n, np.int16)
    rows = clip_rows(frame, face)
    assert rows.shape == (4, 8)
    assert frame[rows.reshape(-1)].tolist() == np.linspace(0, n - 1, 32, dtype=int).tolist()
    second_faces = np.concatenate([face, np.ones(5, np.int16)])
    assert clip_rows(np.concatenate([frame, frame[:5]]), second_faces).shape == (4, 8)
    assert clip_rows(frame[:0], face[:0]).shape == (0, 8)
