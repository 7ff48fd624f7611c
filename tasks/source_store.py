"""A source's `SourceMemory` across builds: `detections` side-table rows (storage/detections.py) and back.

A source-aware build commits what each of its sources leaves for fakes (the detector's answer per frame
asked, in order; each kept face's identity, thumbnail and identity embedding). A later build that adds
fakes of a committed source reads it back once per source (`load_committed`) and each fake reuses it
exactly as a fake in the source's own shard would, with the same verification.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from faceshard.records import Detections, VideoInfo
from faceshard.storage.commit import Output
from faceshard.storage.detections import CommittedSource, read_sources
from faceshard.tasks.sources import THUMB_SIDE, SourceMemory

NO_DETECTIONS = "source has no usable detections"  # the in-shard wording (SourceMemory.mismatch)


def memory_rows(memory: SourceMemory) -> list[dict[str, Any]]:
    """The `detections` rows of a source: one per frame the detector was asked about (in order), one
    per kept face. Thumbnails are stored as the uint8 pixels they were made from (exact)."""
    rows: list[dict[str, Any]] = []
    for seq, frame in enumerate(memory.order):
        dets = memory.detections[frame]
        rows.append(
            {
                "video_id": memory.video_id,
                "frame": frame,
                "seq": seq,
                "boxes": np.asarray(dets.boxes, np.float32).reshape(-1, 4).tolist(),
                "scores": np.asarray(dets.scores, np.float32).reshape(-1).tolist(),
            }
        )
    for frame, face in sorted({*memory.identity, *memory.thumbs, *memory.embeddings}):
        thumb = memory.thumbs.get((frame, face))
        embedding = memory.embeddings.get((frame, face))
        rows.append(
            {
                "video_id": memory.video_id,
                "frame": frame,
                "face": face,
                "identity": memory.identity.get((frame, face)),
                "thumb": None if thumb is None else np.rint(thumb * 255).astype(np.uint8).tobytes(),
                "id_embedding": None if embedding is None else np.asarray(embedding, np.float32).tolist(),
            }
        )
    return rows


def memory_from(source: CommittedSource) -> SourceMemory | str:
    """The committed source's memory, or why its fakes must be detected on their own."""
    video = source.video
    if video is None:
        return f"source not found in its committed shard {source.shard}"
    if video["status"] == "error":
        return f"source failed: {video['error']}"
    if source.rows is None:
        return f"shard {source.shard} was committed without source detections (an older faceshard)"
    if video["status"] != "ok" or not source.rows:
        return NO_DETECTIONS
    info = VideoInfo(
        video["fps"], video["width"], video["height"], video["n_frames_container"], n_frames=video["n_frames"]
    )
    memory = SourceMemory(source.video_id, info=info, usable=True)
    frames = sorted((row for row in source.rows if row.get("face") is None), key=lambda row: row["seq"])
    for row in frames:
        boxes = np.asarray(row["boxes"], np.float32).reshape(-1, 4)
        memory.detections[row["frame"]] = Detections(boxes, np.asarray(row["scores"], np.float32))
        memory.order.append(row["frame"])
    for row in source.rows:
        if row.get("face") is None:
            continue
        key = (row["frame"], row["face"])
        if row.get("identity") is not None:
            memory.identity[key] = row["identity"]
        if row.get("thumb") is not None:
            pixels = np.frombuffer(row["thumb"], np.uint8).reshape(THUMB_SIDE, THUMB_SIDE, 3)
            memory.thumbs[key] = pixels.astype(np.float32) / 255
        if row.get("id_embedding") is not None:
            memory.embeddings[key] = np.asarray(row["id_embedding"], np.float32)
    return memory


def load_committed(output: Output, where: Mapping[str, int]) -> dict[str, SourceMemory | str]:
    """Each committed source of `where` (id → its shard): its memory, or why it cannot be reused."""
    return {video_id: memory_from(source) for video_id, source in read_sources(output, where).items()}
