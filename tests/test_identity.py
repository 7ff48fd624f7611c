"""Identity embedders (models/identity.py) and per-video clustering (tasks/identity.py)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import networkx as nx
import numpy as np
import pytest
import torch
from conftest import SHARED_FIXTURES
from PIL import Image

from faceshard.config import IdentityConfig
from faceshard.models import registry
from faceshard.models.identity import FACENET, DlibEmbedder, FaceNetEmbedder, build_identity_embedder
from faceshard.models.registry import WeightsUnavailableError
from faceshard.records import Face
from faceshard.tasks.identity import (
    assign_identities,
    cluster_identities,
    cluster_mutual_knn,
    clustering_rule,
    similarity_matrix,
)

FIXTURES = SHARED_FIXTURES


def make_face(frame: int, side: int = 10, embedding: np.ndarray | None = None, rank: int = 0) -> Face:
    return Face(
        frame=frame,
        face=rank,
        box=np.array([0, 0, side, side], np.float32),
        score=1.0,
        frame_width=640,
        frame_height=480,
        crop=np.zeros((side, side, 3), np.uint8),
        id_embedding=embedding,
    )


def unit(*angles_deg: float) -> np.ndarray:
    """2-d unit vectors at the given angles: cosine similarity = cos(angle difference)."""
    radians = np.deg2rad(angles_deg)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


# ------------------------------------------------------------------------------------ MINTIME's rule


def mintime_reference(embeddings: np.ndarray, threshold: float) -> np.ndarray:
    """MINTIME's loop as published (dot products, i ≠ j, > threshold, networkx components), numbered
    by earliest face, unassigned −1: what cluster_identities must reproduce."""
    similarities = embeddings @ embeddings.T
    graph = nx.Graph()
    for i in range(len(similarities)):
        for j in range(len(similarities)):
            if i != j and similarities[i, j] > threshold:
                graph.add_edge(i, j)
    labels = np.full(len(embeddings), -1)
    components = sorted((sorted(c) for c in nx.connected_components(graph)), key=lambda c: c[0])
    for number, component in enumerate(components):
        labels[component] = number
    return labels


def test_matches_mintimes_published_loop_on_random_people() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    faces = centres[rng.integers(0, 5, 60)] + rng.normal(scale=0.9, size=(60, 16))
    faces /= np.linalg.norm(faces, axis=1, keepdims=True)
    for threshold in (0.3, 0.45, 0.6):
        np.testing.assert_array_equal(
            cluster_identities(faces, threshold), mintime_reference(faces, threshold)
        )


def test_edge_needs_similarity_strictly_above_the_threshold() -> None:
    embeddings = unit(0, 40)
    at = similarity_matrix(embeddings, "cosine")[0, 1]
    assert list(cluster_identities(embeddings, threshold=at)) == [-1, -1]
    assert list(cluster_identities(embeddings, threshold=np.nextafter(at, -1))) == [0, 0]


def test_euclidean_edge_needs_distance_strictly_below_the_threshold() -> None:
    embeddings = np.array([[0.0, 0.0], [0.6, 0.0], [0.0, 0.59]])
    # 0–1 at exactly 0.6: no edge; 0–2 at 0.59: edge; 1–2 at ~0.84: none.
    assert list(cluster_identities(embeddings, 0.6, "euclidean")) == [0, -1, 0]


def test_isolated_faces_are_unassigned_and_identities_numbered_by_earliest_face() -> None:
    # temporal order: B, A, B, lone, A
    embeddings = unit(90, 0, 92, 200, 3)
    assert list(cluster_identities(embeddings, 0.45)) == [0, 1, 0, -1, 1]


def test_components_chain_through_a_middle_face() -> None:
    # A–B and B–C are above 0.45 but A–C is not: MINTIME's transitive rule still joins all three.
    embeddings = unit(0, 55, 110)
    assert similarity_matrix(embeddings, "cosine")[0, 2] < 0.45
    assert list(cluster_identities(embeddings, 0.45)) == [0, 0, 0]


def test_min_cluster_ratio_drops_small_identities_and_renumbers() -> None:
    # identity X (2 faces, earliest), identity Y (4 faces); ratio 0.4 × 6 = 2.4 > 2 drops X.
    embeddings = unit(0, 90, 2, 91, 92, 93)
    assert list(cluster_identities(embeddings, 0.45)) == [0, 1, 0, 1, 1, 1]
    assert list(cluster_identities(embeddings, 0.45, min_cluster_ratio=0.4)) == [-1, 0, -1, 0, 0, 0]
    assert list(cluster_identities(embeddings, 0.45, min_cluster_ratio=0.3)) == [0, 1, 0, 1, 1, 1]


def test_empty_and_single_face() -> None:
    assert cluster_identities(np.zeros((0, 512))).shape == (0,)
    assert list(cluster_identities(np.ones((1, 512)))) == [-1]
    assert cluster_mutual_knn(np.zeros((0, 8)), []).shape == (0,)
    assert list(cluster_mutual_knn(np.ones((1, 8)), [0])) == [-1]
    with pytest.raises(ValueError, match="metric"):
        cluster_identities(np.ones((2, 4)), metric="manhattan")


# --------------------------------------------------------------------------------- mutual k-NN rule


def test_mutual_knn_keeps_a_crowd_on_one_frame_apart_where_components_merge_it() -> None:
    # Six people on each of three frames; every face is a little similar to every other (blurry crowd),
    # and each person is most similar to themself on the other frames.
    rng = np.random.default_rng(1)
    people = rng.normal(size=(6, 32))
    shared = rng.normal(size=32) * 2.2
    embeddings, frames = [], []
    for frame in range(3):
        for person in range(6):
            embeddings.append(shared + people[person] + rng.normal(scale=0.2, size=32))
            frames.append(frame)
    embeddings_array = np.array(embeddings)

    mintime = cluster_identities(embeddings_array, 0.45)
    assert set(mintime) == {0}  # the whole crowd chains into one identity

    labels = cluster_mutual_knn(embeddings_array, frames, 0.45, k=2)
    person_of = np.tile(np.arange(6), 3)
    assert len(set(labels)) == 6 and -1 not in labels
    for identity in set(labels):  # each identity is exactly one person, seen once per frame
        members = labels == identity
        assert len(set(person_of[members])) == 1 and sorted(np.array(frames)[members]) == [0, 1, 2]


def test_mutual_knn_never_puts_two_faces_of_one_frame_in_one_identity() -> None:
    rng = np.random.default_rng(2)
    embeddings = rng.normal(size=(80, 8)) + 3.0
    frames = rng.integers(0, 10, 80)
    labels = cluster_mutual_knn(embeddings, frames, 0.2, k=4)
    assert (labels >= 0).sum() > 20
    for identity in set(labels) - {-1}:
        assert len(set(frames[labels == identity])) == (labels == identity).sum()


def test_mutual_knn_numbering_and_ratio_follow_mintime() -> None:
    embeddings = unit(90, 0, 92, 200, 3, 91)
    frames = [0, 0, 1, 1, 2, 2]
    assert list(cluster_mutual_knn(embeddings, frames, 0.45, k=2)) == [0, 1, 0, -1, 1, 0]
    assert list(cluster_mutual_knn(embeddings, frames, 0.45, k=2, min_cluster_ratio=0.4)) == [
        0,
        -1,
        0,
        -1,
        -1,
        0,
    ]


# ------------------------------------------------------------------------------ identity rows / assign


def test_assign_identities_sets_faces_and_ranks_by_mean_side() -> None:
    angles = [0, 90, 1, 91, 2, 200]
    sides = [40, 60, 50, 50, 60, 99]
    faces = [make_face(f, s, unit(a)[0]) for f, (a, s) in enumerate(zip(angles, sides, strict=True))]
    rows = assign_identities(faces, IdentityConfig(), "cosine", 0.45)
    assert [f.identity for f in faces] == [0, 1, 0, 1, 0, -1]
    assert [(r.identity, r.rank, r.n_faces, r.mean_side, r.first_frame, r.last_frame) for r in rows] == [
        (0, 1, 3, 50.0, 0, 4),
        (1, 0, 2, 55.0, 1, 3),
    ]


def test_rank_ties_keep_identity_order_and_mutual_knn_is_dispatched() -> None:
    faces = [make_face(f, 30, unit(a)[0]) for f, a in enumerate([0, 90, 1, 91])]
    rows = assign_identities(faces, IdentityConfig(clustering="mutual_knn", knn=1), "cosine", 0.45)
    assert [(r.identity, r.rank) for r in rows] == [(0, 0), (1, 1)]
    crowd = [make_face(0, 30, unit(a)[0], rank=i) for i, a in enumerate([0, 1, 2])]
    assign_identities(crowd, IdentityConfig(clustering="mutual_knn"), "cosine", 0.45)
    assert [f.identity for f in crowd] == [-1, -1, -1]  # one frame: never the same person
    assign_identities(crowd, IdentityConfig(clustering="mintime"), "cosine", 0.45)
    assert [f.identity for f in crowd] == [0, 0, 0]
    assert assign_identities([], IdentityConfig(), "cosine", 0.45) == []


def test_clustering_rule_takes_the_config_then_the_embedders_defaults() -> None:
    assert clustering_rule(IdentityConfig(), "euclidean", 0.6) == ("euclidean", 0.6)
    assert clustering_rule(IdentityConfig(threshold=0.5), "euclidean", 0.6) == ("euclidean", 0.5)
    assert clustering_rule(IdentityConfig(metric="cosine", threshold=0.9), "euclidean", 0.6) == (
        "cosine",
        0.9,
    )
    with pytest.raises(ValueError, match=r"set identity\.threshold"):
        clustering_rule(IdentityConfig(metric="cosine"), "euclidean", 0.6)


# ------------------------------------------------------------------------------------------- FaceNet


def spec_facenet_input(crop: np.ndarray) -> torch.Tensor:
    """SPEC §5 written independently: torchvision Resize([128, 128]) on a PIL image (MINTIME's call),
    then facenet-pytorch's fixed_image_standardization."""
    from facenet_pytorch import fixed_image_standardization
    from torchvision.transforms import Resize

    resized = np.asarray(Resize([128, 128])(Image.fromarray(crop)), dtype=np.float32)
    return fixed_image_standardization(torch.from_numpy(resized).permute(2, 0, 1))


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    registry.clear_model_cache()
    return tmp_path


def save_facenet(path: Path, seed: int) -> torch.nn.Module:
    """A random InceptionResnetV1 saved like the vggface2 file (which also holds the 8631-class head)."""
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(seed)
    model = InceptionResnetV1(classify=True, num_classes=8631).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    model.classify = False
    return model


def test_facenet_matches_a_direct_call_with_the_spec_preprocessing(torch_home: Path) -> None:
    reference = save_facenet(torch_home / "checkpoints" / FACENET.weights, seed=0)
    rng = np.random.default_rng(0)
    crops = [
        rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((97, 97, 3), (160, 120, 3), (40, 52, 3))
    ]
    embedder = build_identity_embedder(IdentityConfig(embedder="facenet"), "cpu")
    assert (embedder.metric, embedder.default_threshold, embedder.dim) == ("cosine", 0.45, 512)
    faces = embedder([_with_crop(make_face(i), crop) for i, crop in enumerate(crops)])
    with torch.no_grad():
        direct = reference(torch.stack([spec_facenet_input(c) for c in crops])).numpy()
    ours = np.stack([f.id_embedding for f in faces])
    assert np.abs(ours - direct).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert embedder.weights.source.endswith(FACENET.weights) and not embedder.weights.random


def _with_crop(face: Face, crop: np.ndarray) -> Face:
    face.crop = crop
    return face


def test_facenet_fingerprint_follows_the_weights(torch_home: Path, tmp_path: Path) -> None:
    first = tmp_path / "a" / "facenet.pt"
    second = tmp_path / "b" / "facenet.pt"
    save_facenet(first, seed=1)
    save_facenet(second, seed=2)
    a = FaceNetEmbedder(str(first))
    b = FaceNetEmbedder(str(second))
    assert a.fingerprint != b.fingerprint and a.fingerprint.startswith("sha256:")
    crop = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert not np.allclose(a.embed_crops([crop]), b.embed_crops([crop]))


def test_missing_facenet_weights_name_every_file_looked_for(torch_home: Path) -> None:
    with pytest.raises(WeightsUnavailableError) as error:
        build_identity_embedder(IdentityConfig(embedder="facenet"), "cpu")
    message = str(error.value)
    assert str(torch_home / "checkpoints" / FACENET.weights) in message
    assert "identity.weights" in message
    with pytest.raises(WeightsUnavailableError, match=r"/no/such/file\.pt"):
        FaceNetEmbedder("/no/such/file.pt")


# ---------------------------------------------------------------------------------------------- dlib


def astronaut_face() -> tuple[np.ndarray, np.ndarray]:
    """A real face crop (skimage's astronaut) and its dlib HOG box in crop coordinates."""
    import dlib
    from skimage import data

    image = np.ascontiguousarray(data.astronaut())
    box = dlib.get_frontal_face_detector()(image, 0)[0]
    x1, y1, x2, y2 = box.left(), box.top(), box.right(), box.bottom()
    margin = (x2 - x1) // 3
    top, left = max(y1 - margin, 0), max(x1 - margin, 0)
    crop = np.ascontiguousarray(image[top : y2 + margin, left : x2 + margin])
    return crop, np.array([x1 - left, y1 - top, x2 - left, y2 - top], np.float32)


def test_dlib_matches_a_direct_dlib_call_and_separates_people() -> None:
    import dlib
    from matplotlib import cbook

    from faceshard.models.identity import DLIB_SHAPE_PREDICTOR, dlib_models_dir

    crop, box = astronaut_face()
    embedder = build_identity_embedder(IdentityConfig(embedder="dlib"), "cpu")
    assert (embedder.metric, embedder.default_threshold, embedder.dim) == ("euclidean", 0.6, 128)
    face = _with_crop(make_face(0), crop)
    face.box_in_crop = box
    (face,) = embedder([face])

    models_dir = dlib_models_dir()
    predictor = dlib.shape_predictor(str(models_dir / DLIB_SHAPE_PREDICTOR))
    recogniser = dlib.face_recognition_model_v1(str(models_dir / "dlib_face_recognition_resnet_model_v1.dat"))
    shape = predictor(crop, dlib.rectangle(*(int(v) for v in box)))
    direct = np.asarray(recogniser.compute_face_descriptor(crop, shape))
    assert face.id_embedding.shape == (128,) and np.abs(face.id_embedding - direct).max() < 1e-5

    # the same face shifted inside a tighter crop stays within 0.6; another person does not
    shifted = np.ascontiguousarray(crop[5:, 7:])
    same = embedder.embed_crops([shifted], [box - np.array([7, 5, 7, 5], np.float32)])[0]
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = np.ascontiguousarray(np.asarray(Image.open(handle).convert("RGB")))
    hopper_box = dlib.get_frontal_face_detector()(hopper, 1)[0]
    other = embedder.embed_crops(
        [hopper], [np.array([hopper_box.left(), hopper_box.top(), hopper_box.right(), hopper_box.bottom()])]
    )[0]
    assert np.linalg.norm(same - face.id_embedding) < 0.6 < np.linalg.norm(other - face.id_embedding)
    assert embedder.weights.fingerprint.startswith("sha256:")


# ---------------------------------------------------------------------------- real crowd (fixtures)


@pytest.mark.fixtures
@pytest.mark.skipif(
    not (FIXTURES / "street_crowd.mp4").exists(),
    reason=f"needs {FIXTURES / 'street_crowd.mp4'} (the shared real-footage fixtures; absent in user clones)",
)
def test_street_crowd_identities_per_rule() -> None:
    """Real detections (MTCNN, one frame per second, full resolution), dlib embeddings, both rules."""
    import av
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, thresholds=[0.85, 0.95, 0.95], min_face_size=20, factor=0.709, device="cpu")
    faces = []
    with av.open(str(FIXTURES / "street_crowd.mp4")) as container:
        stream = container.streams.video[0]
        fps = int(stream.average_rate)
        for index, frame in enumerate(container.decode(stream)):
            if index % fps:
                continue
            rgb = np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
            boxes, _ = mtcnn.detect(rgb)
            for rank, box in enumerate([] if boxes is None else boxes):
                x1, y1, x2, y2 = (int(v) for v in box)
                pad_w, pad_h = (x2 - x1) // 3, (y2 - y1) // 3
                top, left = max(y1 - pad_h, 0), max(x1 - pad_w, 0)
                face = make_face(index, rank=rank)
                face.crop = np.ascontiguousarray(rgb[top : y2 + pad_h, left : x2 + pad_w])
                face.box_in_crop = np.array([x1 - left, y1 - top, x2 - left, y2 - top], np.float32)
                faces.append(face)
    embeddings = DlibEmbedder().embed(faces)
    frames = np.array([f.frame for f in faces])

    def same_frame_merges(labels: np.ndarray) -> int:
        return sum(len(set(frames[labels == i])) < (labels == i).sum() for i in set(labels) - {-1})

    mintime = cluster_identities(embeddings, 0.6, "euclidean")
    mutual = cluster_mutual_knn(embeddings, frames, 0.6, "euclidean", k=3)
    print(
        f"\nstreet_crowd: {len(faces)} faces on {len(set(frames))} frames, max "
        f"{max(Counter(frames.tolist()).values())} per frame; mintime: {len(set(mintime) - {-1})} identities "
        f"({same_frame_merges(mintime)} holding two faces of one frame); mutual_knn: "
        f"{len(set(mutual) - {-1})} identities, {(mutual == -1).sum()} unassigned"
    )
    assert len(faces) >= 20
    assert same_frame_merges(mintime) >= 1  # the chaining weakness, on real footage
    assert same_frame_merges(mutual) == 0
    assert len(set(mutual) - {-1}) > len(set(mintime) - {-1})
