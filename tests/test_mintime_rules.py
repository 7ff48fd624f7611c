"""MINTIME's sample rules, transcribed from its code and compared with ours on randomized videos.

The oracle below is written from MINTIME's `deepfakes_dataset.py` (github.com/davide-coccomini/MINTIME,
commit 064d0f0e), `get_sorted_identities` and `__getitem__`, line by line with its line numbers, on
MINTIME's own data model: a video folder of identity folders holding `<frame>_<face>.png` files, plus
the faces no identity took as loose files. It never calls faceshard; the tests turn our face rows into
that folder model and compare what each side puts in every slot.

Where MINTIME depends on directory listing order (faces of one frame inside an identity; which loose
face of a frame fills identity 0), the oracle is given names in (frame, face) order: that is the order
faceshard fixes, and the one thing not MINTIME's own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceshard.storage.datasets import SampleOptions, mintime_forward, mintime_video_id, mintime_video_index
from faceshard.storage.sequences import assign_slots, linspace_picks, mintime_sample

# deepfakes_dataset.py:50-53 (the key 1 is never read: one identity takes every frame, :167-169)
QUOTAS = {
    2: lambda f: [int(f / 2), int(f / 2)],
    3: lambda f: [int(f / 3), int(f / 3), int(f / 4)],
    4: lambda f: [int(f / 3), int(f / 3), int(f / 8), int(f / 8)],
}


def mintime_counts(face_counts: list[int], num_frames: int, max_identities: int) -> list[int]:
    """deepfakes_dataset.py:149-186, `sorted_identities[i][2]` after get_sorted_identities."""
    counts = list(face_counts)
    if len(counts) > max_identities:  # :149-150
        counts = counts[:max_identities]
    identities_number = len(counts)  # :153
    available_additional_faces = []
    if identities_number > 1:  # :155
        max_faces_per_identity = QUOTAS[identities_number](num_frames)
        for i in range(identities_number):  # :157-165
            if counts[i] < max_faces_per_identity[i] and i < identities_number - 1:
                counts[i + 1] += max_faces_per_identity[i] - counts[i]
                available_additional_faces.append(0)
            elif counts[i] > max_faces_per_identity[i]:
                available_additional_faces.append(counts[i] - max_faces_per_identity[i])
                counts[i] = max_faces_per_identity[i]
            else:
                available_additional_faces.append(0)
    else:  # :167-169
        counts[0] = num_frames
        available_additional_faces.append(0)
    input_sequence_length = sum(counts)  # :172
    if input_sequence_length < num_frames:  # :173-186
        for i in range(identities_number):
            needed_faces = num_frames - input_sequence_length
            if available_additional_faces[i] > 0:
                added_faces = min(available_additional_faces[i], needed_faces)
                counts[i] += added_faces
                input_sequence_length += added_faces
                if input_sequence_length == num_frames:
                    break
        if input_sequence_length < num_frames:
            needed_faces = num_frames - input_sequence_length
            counts[-1] += needed_faces
            input_sequence_length += needed_faces
    return counts


def frame_of(name: str) -> int:
    return int(name.split("_")[0])  # :229, :237, :266


def mintime_item(
    identities: list[list[str]],
    discarded: list[str],
    sizes: dict[str, int],
    index: int,
    num_frames: int,
    max_identities: int,
    num_patches: int,
) -> dict[str, list]:
    """deepfakes_dataset.py:123-330 on names: identities in rank order (its size sort, :142-143, is
    done by the caller), loose names in `discarded`. Returns the slot names (None = padding) and what
    it hands the model, with the mask it meant (:284-285 tests `len(identity_images) < max_faces`
    after padding to max_faces, so its real mask is all ones: `mask_as_run`)."""
    if len(identities) == 0:  # :137-139: no identity folder → the loose faces are one identity
        identities, discarded = [list(discarded)], []
    identities = identities[:max_identities]
    counts = mintime_counts([len(i) for i in identities], num_frames, max_identities)
    slots, mask, size_embeddings, images_frames = [], [], [], []
    for identity_index, identity_faces in enumerate(identities):
        max_faces = counts[identity_index]
        identity_faces = list(identity_faces)
        if identity_index == 0 and len(discarded) > 0:  # :228-235
            frames = [frame_of(p) for p in identity_faces]
            discarded_frames = [frame_of(p) for p in discarded]
            missing_frames = list(set(discarded_frames) - set(frames))
            missing_faces = [discarded[discarded_frames.index(m)] for m in missing_frames]
            if len(missing_faces) > 0:
                identity_faces = identity_faces + missing_faces
        identity_faces = np.asarray(sorted(identity_faces, key=frame_of))  # :237
        if len(identity_faces) > max_faces:  # :240-246
            if index % 2:
                idx = np.round(np.linspace(0, len(identity_faces) - 2, max_faces)).astype(int)
            else:
                idx = np.round(np.linspace(1, len(identity_faces) - 1, max_faces)).astype(int)
            identity_faces = identity_faces[idx]
        identity_slots, identity_sizes = [], []
        for image_path in identity_faces:  # :255-270
            identity_sizes.append(sizes[str(image_path)])
            images_frames.append(frame_of(str(image_path)))
            identity_slots.append(str(image_path))
        diff = 0
        if len(identity_slots) < max_faces:  # :274-282
            diff = max_faces - len(identity_sizes)
            identity_sizes = identity_sizes + [0] * diff
            identity_slots = identity_slots + [None] * diff
            images_frames.extend([max(images_frames) if images_frames else 0 for _ in range(diff)])
        mask.extend([1 if i < max_faces - diff else 0 for i in range(max_faces)])  # :285, as meant
        size_embeddings.extend(identity_sizes)
        slots.extend(identity_slots)
    identities_mask = []  # :315-321
    last_range_end = 0
    for identity_index in range(len(identities)):
        row = [last_range_end <= i < last_range_end + counts[identity_index] for i in range(num_frames)]
        identities_mask.extend([row] * counts[identity_index])
        last_range_end += counts[identity_index]
    images_frames_positions = {k: v + 1 for v, k in enumerate(sorted(set(images_frames)))}  # :324-329
    frame_positions = [images_frames_positions[frame] for frame in images_frames]
    positions = [[i + 1 for i in range((fp - 1) * num_patches, num_patches * fp)] for fp in frame_positions]
    positions = sum(positions, [])  # noqa: RUF017 (as written there)
    positions.insert(0, 0)
    return {
        "slots": slots,
        "counts": counts,
        "mask": mask,
        "mask_as_run": [1] * len(slots),
        "size_embeddings": size_embeddings,
        "identities_mask": identities_mask,
        "positions": positions,
    }


# ------------------------------------------------------------------------------------- random videos


def random_video(rng: np.random.Generator, n_ids: int, unassigned_rate: float):
    """Face rows (frame, face, identity, size) of one video, shuffled; identity ids are arbitrary and
    ranked by `rank`. Several identities can share a frame; a frame's faces are numbered 0, 1, …"""
    n_frames = int(rng.integers(1, 60))
    frame_list, ident_list = [], []
    ids = rng.choice(1000, size=n_ids, replace=False)
    for i in ids:
        present = rng.choice(n_frames, size=int(rng.integers(1, n_frames + 1)), replace=False)
        frame_list += present.tolist()
        ident_list += [int(i)] * len(present)
    extra = int(rng.integers(0, 10))  # faces nobody took, in frames anyone may have
    frame_list += rng.integers(0, n_frames, size=extra).tolist()
    ident_list += [-1] * extra
    frame = np.array(frame_list, np.int32)
    identity = np.array(ident_list, np.int32)
    identity[rng.random(len(identity)) < unassigned_rate] = -1
    face = np.zeros(len(frame), np.int16)
    for f in np.unique(frame):
        where = np.flatnonzero(frame == f)
        face[where] = rng.permutation(len(where))
    size = rng.integers(1, 21, size=len(frame)).astype(np.int8)
    perm = rng.permutation(len(frame))
    rank = {int(i): r for r, i in enumerate(rng.permutation(ids))}
    return frame[perm], face[perm], identity[perm], size[perm], rank


def as_folders(frame, face, identity, size, rank):
    """Our rows as MINTIME's video folder: identity folders in rank order, loose faces, sizes."""
    name = [f"{f}_{k}" for f, k in zip(frame.tolist(), face.tolist(), strict=True)]
    by_frame = np.lexsort((face, frame))
    ordered = sorted({int(i) for i in identity.tolist() if i >= 0}, key=lambda i: rank[i])
    folders = [[name[r] for r in by_frame if identity[r] == i] for i in ordered]
    loose = [name[r] for r in by_frame if identity[r] == -1]
    return folders, loose, dict(zip(name, size.tolist(), strict=True)), name


def test_slot_counts_equal_mintime_s_for_1_to_4_identities_and_its_worked_examples() -> None:
    # SPEC §8 step 2's examples, each checked against the transcription too
    examples = [
        ([12, 4], 16, 2, [12, 4]),
        ([3, 20], 16, 2, [3, 13]),
        ([3, 6], 16, 2, [3, 13]),
        ([1, 1, 1], 16, 3, [1, 5, 10]),
        ([2, 1, 9], 16, 3, [2, 4, 10]),
        ([17, 33, 1, 14], 16, 4, [8, 5, 1, 2]),
        ([17, 33, 1, 14], 32, 4, [17, 10, 1, 4]),
    ]
    for counts, f, m, expected in examples:
        assert mintime_counts(counts, f, m) == expected
        assert assign_slots(counts, f, m) == expected
    rng = np.random.default_rng(0)
    cases = 0
    for _ in range(4000):
        max_identities = int(rng.integers(1, 5))
        counts = [int(c) for c in rng.integers(1, 40, size=int(rng.integers(1, 6)))]  # 1–5 identities
        num_frames = int(rng.choice([8, 16, 32]))
        got = assign_slots(counts, num_frames, max_identities)
        assert got == mintime_counts(counts, num_frames, max_identities), (counts, num_frames)
        assert sum(got) == num_frames
        cases += 1
    assert cases == 4000


def test_five_identities_are_refused_up_front() -> None:
    # MINTIME has no quota for 5 identities (deepfakes_dataset.py:50-53, :156 KeyError): we say so first
    with pytest.raises(ValueError, match="1…4"):
        SampleOptions(max_identities=5)
    assert assign_slots([3, 3, 3, 3, 3], 16, 4) == mintime_counts([3, 3, 3, 3, 3], 16, 4)


@pytest.mark.parametrize("index", [0, 1, 2, 7])
def test_picks_follow_the_parity_of_the_dataset_index(index: int) -> None:
    for n in range(1, 60):
        for k in range(1, 33):
            names = np.arange(n)
            expected = names
            if n > k:  # deepfakes_dataset.py:240-246
                start, stop = (0, n - 2) if index % 2 else (1, n - 1)
                expected = names[np.round(np.linspace(start, stop, k)).astype(int)]
            assert linspace_picks(n, k, index).tolist() == expected.tolist(), (n, k, index)


def compare(frame, face, identity, size, rank, index, num_frames, max_identities, tokens=4):
    folders, loose, sizes, name = as_folders(frame, face, identity, size, rank)
    want = mintime_item(folders, loose, sizes, index, num_frames, max_identities, tokens)
    feats = np.zeros((len(frame), tokens, 2), np.float32)
    s = mintime_sample(frame, identity, size, feats, 1, rank, num_frames, max_identities, index, face)
    got_slots = [name[r] if r >= 0 else None for r in s.rows.tolist()]
    assert got_slots == want["slots"]
    assert s.mask.astype(int).tolist() == want["mask"]
    assert s.size_bucket.tolist() == want["size_embeddings"]
    assert s.identities_mask.tolist() == want["identities_mask"]
    assert s.forward_positions.tolist() == want["positions"]
    return want, set(loose)


def test_samples_equal_mintime_s_on_random_videos_with_unassigned_faces() -> None:
    rng = np.random.default_rng(1)
    filled = padded_middle = 0
    for _ in range(1500):
        n_ids = int(rng.integers(1, 6))
        video = random_video(rng, n_ids, unassigned_rate=float(rng.choice([0.0, 0.2, 0.6])))
        if not (video[2] >= 0).any():
            continue
        max_identities = int(rng.integers(1, 5))
        index, num_frames = int(rng.integers(0, 100)), int(rng.choice([8, 16, 32]))
        want, loose = compare(*video, index, num_frames, max_identities)
        first = want["counts"][0]
        filled += any(name in loose for name in want["slots"][:first])
        padded_middle += len(want["counts"]) > 2 and 0 in want["mask"][first : first + want["counts"][1]]
    # both rules were exercised: loose faces filling identity 0, a middle identity padded
    assert filled > 100 and padded_middle > 10, (filled, padded_middle)


def test_identity_0_is_completed_with_the_first_unassigned_face_of_each_frame_it_lacks() -> None:
    # identity 5 (rank 0) in frames 0, 2; identity 9 in 0…3; unassigned: two in frame 1, one in 2, one in 4
    frame = np.array([0, 2, 0, 1, 2, 3, 1, 1, 2, 4], np.int32)
    face = np.array([0, 0, 1, 0, 1, 1, 2, 1, 2, 0], np.int16)
    identity = np.array([5, 5, 9, 9, 9, 9, -1, -1, -1, -1], np.int32)
    size = np.arange(1, 11, dtype=np.int8)
    s = mintime_sample(frame, identity, size, np.zeros((10, 1, 1)), 0, {5: 0, 9: 1}, 16, 2, 0, face)
    # slots from the clustered counts [2, 4] → [2, 14]; identity 0 becomes frames 0, 1 (its first loose
    # face: face 1, row 7), 2, 4 (row 9); 4 faces for 2 slots at an even index: linspace(1, 3, 2) → 1, 3
    assert s.rows[:2].tolist() == [7, 9]
    assert s.rows[2:6].tolist() == [2, 3, 4, 5] and not s.mask[6:].any()
    compare(frame, face, identity, size, {5: 0, 9: 1}, 0, 16, 2)


def test_a_video_without_identities_is_one_identity_of_all_its_faces() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        frame, face, identity, size, _ = random_video(rng, 1, 0.0)
        identity[:] = -1
        for index in (0, 1):
            compare(frame, face, identity, size, {}, index, 16, 2)
    s = mintime_sample(frame, identity, size, np.ones((len(frame), 1, 3)), 0)
    assert s.mask.sum() == min(16, len(frame)) and (s.identity[s.mask] == 1).all()


def test_forward_arguments_have_the_names_shapes_and_dtypes_its_forward_takes() -> None:
    import inspect

    rng = np.random.default_rng(4)
    frame, _, identity, size, rank = random_video(rng, 3, 0.2)
    tokens = rng.standard_normal((len(frame), 49, 1280)).astype(np.float16)
    s = mintime_sample(frame, identity, size, tokens, 1, rank, 16, 2, 3)
    forward = mintime_forward(s)
    # size_invariant_timesformer.py:224 `forward(self, x, mask, identities_mask, size_embedding, positions)`
    assert list(forward) == ["x", "mask", "identities_mask", "size_embedding", "positions"]
    expected = {
        "x": ((16, 1280, 7, 7), torch.float32),  # train.py:341-355: backbone (b f) c h w → b f c h w
        "mask": ((16,), torch.bool),  # deepfakes_dataset.py:339 .bool()
        "identities_mask": ((16, 16), torch.bool),
        "size_embedding": ((16,), torch.int32),  # .int()
        "positions": ((16 * 49 + 1,), torch.int64),  # torch.tensor(list of int)
    }
    assert {k: (tuple(v.shape), v.dtype) for k, v in forward.items()} == expected
    # the 7×7 grid holds the 49 tokens in the order `rearrange('b f c h w -> b (f h w) c')` reads them
    x = forward["x"]
    flat = x.permute(0, 2, 3, 1).reshape(16 * 49, 1280)
    assert torch.equal(flat, torch.from_numpy(s.features.astype(np.float32)).reshape(16 * 49, 1280))
    signature = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in expected]
    )
    signature.bind(**forward)


def test_mintime_list_entries_map_to_our_forgerynet_ids() -> None:
    # MINTIME's csv/val.csv, splits/test.csv entries; its split_dataset.py:53-71, :114-132 rename
    assert mintime_video_id("val/7/96d6/326a/video.mp4") == "train_video_release/7/96d6/326a/video.mp4"
    assert mintime_video_id("test/1/ab/cd/video.mp4") == "val_video_release/1/ab/cd/video.mp4"
    assert mintime_video_index(["train/1/a/video.mp4", "test/2/b/video.mp4"]) == {
        "train_video_release/1/a/video.mp4": 0,
        "val_video_release/2/b/video.mp4": 1,
    }
    options = SampleOptions(video_index={"v": 7})
    assert options.index_of("v") == 7 and options.index_of("w") == SampleOptions().index_of("w")


def test_shard_dataset_gives_every_video_a_sample_with_its_index_and_forward(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    from torch.utils.data import DataLoader

    from faceshard.storage.commit import Output
    from faceshard.storage.datasets import ShardDataset
    from faceshard.storage.manifest import plan_shards
    from faceshard.storage.testing import fake_shard_tables, fake_videos

    uri = str(tmp_path / "out")
    out = Output.open(uri, config={"embed": {"dtype": "float16"}}, weights={})
    plans = plan_shards(fake_videos(6), 3)
    out.set_plan(plans)
    emb: dict[str, np.ndarray] = {}
    for plan in plans:
        tables = fake_shard_tables(plan, faces_per_video=20, emb_dim=8)
        faces = tables["faces"]
        first = pc.equal(faces["video_id"], plan.videos[0].video_id)  # this video clustered nobody
        column = pc.if_else(first, pa.scalar(-1, pa.int32()), faces["identity"])
        tables["faces"] = faces.set_column(faces.schema.get_field_index("identity"), "identity", column)
        out.commit_shard(plan, tables, {})
        for video in plan.videos:  # each video's embeddings in frame order
            rows = tables["faces"].filter(pc.equal(tables["faces"]["video_id"], video.video_id))
            emb[video.video_id] = np.array(rows["emb_rgb"].to_pylist(), np.float16)

    index = {"v00000": 4, "v00001": 7}
    dataset = ShardDataset(uri, kind="mintime", shuffle=False, options=SampleOptions(video_index=index))
    samples = {s["video_id"]: s for s in dataset}
    assert sorted(samples) == [f"v{i:05d}" for i in range(6)]  # v00000 and v00003 had no identity
    assert samples["v00000"]["mask"].all() and (samples["v00000"]["identity"] == 1).all()
    assert samples["v00000"]["index"].item() == 4 and samples["v00001"]["index"].item() == 7
    assert samples["v00002"]["index"].item() == SampleOptions().index_of("v00002")
    # 20 faces for 16 slots: index 4 (even) picks linspace(1, 19, 16), index 7 (odd) linspace(0, 18, 16)
    for video, start, stop in (("v00000", 1, 19), ("v00001", 0, 18)):
        picked = emb[video][np.round(np.linspace(start, stop, 16)).astype(int)]
        assert np.array_equal(samples[video]["features"][:, 0].numpy(), picked)
        assert samples[video]["positions"][:, 0].tolist() == (np.arange(16) + 1).tolist()
        frames = (np.round(np.linspace(start, stop, 16)).astype(int) * 25).tolist()  # fake rows: frame k·25
        assert samples[video]["frame"].tolist() == frames and (samples[video]["face"] == 0).all()
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in batch["forward"].items()}
    assert shapes == {
        "x": ((3, 16, 8, 1, 1), torch.float32),
        "mask": ((3, 16), torch.bool),
        "identities_mask": ((3, 16, 16), torch.bool),
        "size_embedding": ((3, 16), torch.int32),
        "positions": ((3, 17), torch.int64),
    }
