"""A build without Prefect, Ray or models: the flow's planning and commit path (`flows.plan`,
`Output.apply_plan`, `tasks.shard.process_shard`) with a stub processor whose rows are a pure
function of the video id, so tests can see exactly which videos a build (re)processed.

Run as a script it builds one manifest into one output (the kill -9 test's victim):
`python stub_build.py MANIFEST URI SHARD_SIZE SLEEP_S`.
"""

from __future__ import annotations

import hashlib
import sys
import time
from typing import Any

import numpy as np

from faceshard.config import BuildConfig, load_config
from faceshard.flows import plan as planning
from faceshard.records import VideoTask
from faceshard.storage.commit import Output
from faceshard.storage.manifest import load_manifest
from faceshard.storage.schema import video_row
from faceshard.tasks import shard as shard_task
from faceshard.tasks.pipeline import VideoResult

WEIGHTS = {"stub": {"source": "tests", "fingerprint": "stub-1", "random": False}}
EMB_DIM = 4


class StubProcessor:
    """Rows from the id alone; `errors` maps video_id → error text; remembers what it processed."""

    def __init__(self, errors: dict[str, str] | None = None, sleep_s: float = 0.0) -> None:
        self.dims = {"emb_rgb_dim": EMB_DIM}
        self.weights = WEIGHTS
        self.errors = dict(errors or {})
        self.sleep_s = sleep_s
        self.processed: list[str] = []

    def __call__(self, video: VideoTask, shard_id: int, group: Any = None) -> VideoResult:
        """`group` (a source-aware build's SourceMemory) is ignored: the rows are the id's alone."""
        self.processed.append(video.video_id)
        time.sleep(self.sleep_s)
        seed = int.from_bytes(hashlib.sha256(video.video_id.encode()).digest()[:4], "little")
        error = self.errors.get(video.video_id) or video.error
        n_faces = 0 if error else 1 + seed % 3
        row = video_row(
            video,
            shard_id,
            status="error" if error else "ok",
            error=error,
            fps=None if error else 25.0,
            n_frames=None if error else 50,
            n_frames_container=None if error else 50,
            width=None if error else 64,
            height=None if error else 64,
            n_faces=n_faces,
            n_identities=1 if n_faces else 0,
        )
        rng = np.random.default_rng(seed)
        faces = [
            {
                "video_id": video.video_id,
                "split": video.split,
                "frame": k,
                "face": 0,
                "identity": 0,
                "x1": 1.0,
                "y1": 2.0,
                "x2": 30.0,
                "y2": 40.0,
                "score": 0.9,
                "area_ratio": 5,
                "size_bucket": 1,
                "emb_rgb": rng.standard_normal(EMB_DIM).astype("float16"),
            }
            for k in range(n_faces)
        ]
        identities = [
            {
                "video_id": video.video_id,
                "split": video.split,
                "identity": 0,
                "rank": 0,
                "n_faces": n_faces,
                "mean_side": 30.0,
                "first_frame": 0,
                "last_frame": n_faces - 1,
            }
        ][: 1 if n_faces else 0]
        return VideoResult(video=row, faces=faces, identities=identities)


def stub_build(
    manifest: str,
    uri: str,
    processor: StubProcessor,
    shard_size: int = 2,
    *,
    prune: bool = False,
    retry_failed: bool = False,
    preset: str | None = None,
) -> dict[str, Any]:
    """What `build_dataset` does, in process: plan, record the plan, process the shards in order."""
    cfg = load_config(preset, shard_size=shard_size) if preset else BuildConfig(shard_size=shard_size)
    videos = load_manifest(manifest)
    output = Output.open(uri, config=cfg, weights=WEIGHTS)
    plan = planning.plan_output(output, videos, cfg, prune=prune)
    output.apply_plan(plan)
    todo = planning.shards_to_run(output, videos, plan, retry_failed)
    original = shard_task.get_processor
    shard_task.get_processor = lambda _cfg: processor  # type: ignore[assignment]
    try:
        stats = [shard_task.process_shard(p, cfg, output, retry_failed=retry_failed) for p in todo]
    finally:
        shard_task.get_processor = original  # type: ignore[assignment]
    return {**plan.summary(), "ran": [p.shard_id for p in todo], "stats": stats}


if __name__ == "__main__":
    manifest_arg, uri_arg, size_arg, sleep_arg = sys.argv[1:5]
    stub_build(manifest_arg, uri_arg, StubProcessor(sleep_s=float(sleep_arg)), int(size_arg))
