"""Which weights a build runs with, resolved once in the driver before anything is skipped or written.

The fingerprint must name the exact weights (file hashes, hub revisions, or `random`), and the only
way to know whether a hub model is reachable or falls back to random init is to load it: so the
driver builds the processor once on the CPU. Workers load their own copy once per process.
"""

from __future__ import annotations

from typing import Any

from faceshard.config import BuildConfig


def weights_manifest(cfg: BuildConfig) -> dict[str, dict[str, Any]]:
    """Per role (detector, identity, depth, embed): name, source, fingerprint and whether random."""
    from tasks.shard import get_processor

    return get_processor(
        cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"device": "cpu"})})
    ).weights
