"""Per-video identity clustering (SPEC §5): which faces of a video belong to the same person.

Two rules, both pure numpy/scipy over the identity embeddings of one video's faces, given in temporal
order (frame, then rank in frame):

* `cluster_identities` — MINTIME's rule, reproduced exactly. Draw an edge between faces i ≠ j when
  their cosine similarity is strictly above the threshold (0.45), or, for the `euclidean` metric, when
  their distance is strictly below it (dlib: 0.6). Identities are the connected components of that
  graph. A face with no edge stays unassigned (−1). Components are numbered 0, 1, … by their earliest
  face. MINTIME's README drops clusters smaller than 0.2 × the video's faces but its code never does:
  `min_cluster_ratio` exposes that (default 0, the code's behaviour).

  Known weakness: connected components are transitive. One blurry or profile face that is slightly
  similar to two people joins them, and in crowd scenes many small, low-quality faces are all a bit
  similar to each other, so the whole crowd chains into one identity.

* `cluster_mutual_knn` — a chain-resistant alternative. An edge needs three things: the two faces
  are on different frames, each is among the other's k most similar faces on other frames (mutual
  k-nearest neighbours), and their similarity passes the same threshold. Edges are then merged
  strongest first, and a merge is refused when the two groups share a frame: two faces on one frame
  are two different people, so no identity ever holds two faces of the same frame. A hub face can
  no longer glue everyone together (it has at most k mutual links), and a crowd on one frame stays
  split. Same numbering, −1 and `min_cluster_ratio` rules as MINTIME's.

`assign_identities` runs the configured rule, writes `Face.identity` and returns one `IdentityRow` per
identity, ranked by mean crop side (descending, MINTIME's ordering; ties by identity number).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

from faceshard.config import IdentityConfig
from faceshard.records import Face

METRICS = ("cosine", "euclidean")


@dataclass(frozen=True)
class IdentityRow:
    """One row of the `identities` table (SPEC §10)."""

    identity: int
    rank: int  # 0 = largest mean crop side
    n_faces: int
    mean_side: float
    first_frame: int
    last_frame: int


def _check(embeddings: np.ndarray, metric: str) -> np.ndarray:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (n_faces, dim), got shape {embeddings.shape}")
    return embeddings


def similarity_matrix(embeddings: np.ndarray, metric: str) -> np.ndarray:
    """Pairwise similarity where larger means more alike: cosine similarity, or −distance."""
    embeddings = _check(embeddings, metric)
    if metric == "cosine":
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        unit = embeddings / np.where(norms > 0, norms, 1.0)
        return unit @ unit.T
    return -cdist(embeddings, embeddings)


def edges_above(similarity: np.ndarray, threshold: float, metric: str) -> np.ndarray:
    """MINTIME's edge rule as a boolean matrix: similarity > t (cosine) or distance < t (euclidean), i ≠ j."""
    strength = similarity if metric == "cosine" else -similarity  # distance for euclidean
    adjacency = strength > threshold if metric == "cosine" else strength < threshold
    np.fill_diagonal(adjacency, False)
    return adjacency


def _number_components(component_of: np.ndarray, linked: np.ndarray, min_size: float) -> np.ndarray:
    """Labels 0, 1, … by earliest face; faces without an edge and components below `min_size` → −1."""
    labels = np.full(len(component_of), -1, dtype=np.int64)
    sizes = np.bincount(component_of, minlength=component_of.max(initial=-1) + 1)
    new_label: dict[int, int] = {}
    for face, component in enumerate(component_of):  # input order is temporal order
        if not linked[face] or sizes[component] < min_size:
            continue
        if component not in new_label:
            new_label[component] = len(new_label)
        labels[face] = new_label[component]
    return labels


def cluster_identities(
    embeddings: np.ndarray,
    threshold: float = 0.45,
    metric: str = "cosine",
    min_cluster_ratio: float = 0.0,
) -> np.ndarray:
    """MINTIME's rule: connected components of the thresholded similarity graph (see module docstring).

    Returns int64 labels, one per face: 0, 1, … numbered by each identity's earliest face; −1 for a
    face with no edge, or in a component smaller than `min_cluster_ratio × n_faces`.
    """
    embeddings = _check(embeddings, metric)
    n_faces = len(embeddings)
    if n_faces == 0:
        return np.zeros(0, dtype=np.int64)
    adjacency = edges_above(similarity_matrix(embeddings, metric), threshold, metric)
    _, component_of = connected_components(adjacency, directed=False)
    return _number_components(component_of, adjacency.any(axis=1), min_cluster_ratio * n_faces)


def cluster_mutual_knn(
    embeddings: np.ndarray,
    frames: np.ndarray | list[int],
    threshold: float = 0.45,
    metric: str = "cosine",
    k: int = 3,
    min_cluster_ratio: float = 0.0,
) -> np.ndarray:
    """Chain-resistant clustering: mutual k-NN edges across frames, never two faces of one frame together.

    `frames[i]` is the frame of face i. Candidate edges join faces on different frames that are within
    each other's k most similar faces on other frames and pass `threshold` (MINTIME's strict rule).
    They are merged strongest first (ties by face index) unless the two groups already share a frame.
    Labels follow `cluster_identities`' numbering, −1 and `min_cluster_ratio` rules.
    """
    embeddings = _check(embeddings, metric)
    frames = np.asarray(frames)
    n_faces = len(embeddings)
    if len(frames) != n_faces:
        raise ValueError(f"{n_faces} embeddings but {len(frames)} frames")
    if k < 1:
        raise ValueError("k must be ≥ 1")
    if n_faces == 0:
        return np.zeros(0, dtype=np.int64)

    similarity = similarity_matrix(embeddings, metric)
    other_frame = frames[:, None] != frames[None, :]
    candidates = np.where(other_frame, similarity, -np.inf)
    # k most similar faces on other frames (stable sort: ties go to the earlier face).
    order = np.argsort(-candidates, axis=1, kind="stable")[:, :k]
    is_neighbour = np.zeros((n_faces, n_faces), dtype=bool)
    np.put_along_axis(is_neighbour, order, True, axis=1)
    mutual = is_neighbour & is_neighbour.T & other_frame
    edges = mutual & edges_above(similarity, threshold, metric)

    rows, cols = np.nonzero(np.triu(edges, k=1))
    strongest_first = np.lexsort((cols, rows, -similarity[rows, cols]))
    parent = np.arange(n_faces)
    frames_of: dict[int, set[int]] = {i: {int(frames[i])} for i in range(n_faces)}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    linked = np.zeros(n_faces, dtype=bool)
    merged_rows, merged_cols = [], []
    for edge in strongest_first:
        a, b = root(int(rows[edge])), root(int(cols[edge]))
        if a == b or frames_of[a] & frames_of[b]:
            continue
        small, big = sorted((a, b), key=lambda r: len(frames_of[r]))
        parent[small] = big
        frames_of[big] |= frames_of.pop(small)
        linked[[rows[edge], cols[edge]]] = True
        merged_rows.append(rows[edge])
        merged_cols.append(cols[edge])

    graph = coo_matrix((np.ones(len(merged_rows)), (merged_rows, merged_cols)), shape=(n_faces, n_faces))
    _, component_of = connected_components(graph, directed=False)
    return _number_components(component_of, linked, min_cluster_ratio * n_faces)


def crop_side(face: Face) -> float:
    """A face's crop side as MINTIME measured it (the stored crop's width; its crops are square)."""
    if face.crop is not None:
        return float(face.crop.shape[1])
    if face.crop_size is not None:
        return float(face.crop_size[1])
    return float(face.box[2] - face.box[0])


def identity_rows(faces: list[Face], labels: np.ndarray) -> list[IdentityRow]:
    """Per identity: rank by mean crop side (descending; ties by identity number), counts and frame span."""
    labels = np.asarray(labels)
    if len(labels) != len(faces):
        raise ValueError(f"{len(faces)} faces but {len(labels)} labels")
    stats = []
    for identity in sorted(set(labels.tolist()) - {-1}):
        members = [face for face, label in zip(faces, labels, strict=True) if label == identity]
        frames = [face.frame for face in members]
        mean_side = float(np.mean([crop_side(face) for face in members]))
        stats.append((identity, len(members), mean_side, min(frames), max(frames)))
    by_size = sorted(stats, key=lambda s: (-s[2], s[0]))
    return sorted(
        (IdentityRow(s[0], rank, s[1], s[2], s[3], s[4]) for rank, s in enumerate(by_size)),
        key=lambda row: row.identity,
    )


def clustering_rule(
    cfg: IdentityConfig, embedder_metric: str, embedder_threshold: float
) -> tuple[str, float]:
    """The (metric, threshold) to cluster with: the config's when set, else the embedder's defaults.

    A metric other than the embedder's with no explicit threshold is refused: the embedder's default
    threshold is meaningless on another scale (0.6 is a dlib distance, not a cosine similarity).
    """
    metric = cfg.metric or embedder_metric
    if cfg.threshold is not None:
        return metric, cfg.threshold
    if metric != embedder_metric:
        raise ValueError(
            f"identity.metric={metric} differs from the embedder's {embedder_metric}: set identity.threshold too"
        )
    return metric, embedder_threshold


def assign_identities(
    faces: list[Face], cfg: IdentityConfig, metric: str, threshold: float
) -> list[IdentityRow]:
    """Cluster one video's faces with `cfg.clustering`, set `Face.identity`, return the identity rows.

    `faces` must be in temporal order and carry `id_embedding`; `metric` and `threshold` come from
    `clustering_rule(cfg, embedder.metric, embedder.default_threshold)`.
    """
    if not faces:
        return []
    missing = [i for i, face in enumerate(faces) if face.id_embedding is None]
    if missing:
        raise ValueError(f"{len(missing)} faces have no id_embedding: run the identity embedder first")
    embeddings = np.stack([face.id_embedding for face in faces])  # type: ignore[misc]
    if cfg.clustering == "mutual_knn":
        labels = cluster_mutual_knn(
            embeddings, [face.frame for face in faces], threshold, metric, cfg.knn, cfg.min_cluster_ratio
        )
    else:
        labels = cluster_identities(embeddings, threshold, metric, cfg.min_cluster_ratio)
    for face, label in zip(faces, labels, strict=True):
        face.identity = int(label)
    return identity_rows(faces, labels)
