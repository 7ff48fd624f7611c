"""On a cluster with GPUs, a worker keeps the models it loaded between shards.

Ray ends the worker of a GPU task after every task unless told otherwise (`max_calls` defaults to 1
for tasks that ask for GPUs), and with the worker go the models it loaded: every shard would load
them again. A local Ray cluster that declares one GPU shows it on a CPU-only machine: Ray schedules
by the declared resource, torch finds no CUDA and the pipeline runs on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest

from faceshard.storage.commit import read_state

pytestmark = pytest.mark.slow

BUILD_ON_A_DECLARED_GPU = """
import json, sys
import ray
from faceshard.config import load_config
from faceshard.flows.local import run_build

ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
cfg = load_config("demo", overrides=["runtime.gpus_per_shard=1", "runtime.device=auto"], shard_size=1)
summary = run_build(sys.argv[1], sys.argv[2], cfg)
print(json.dumps({"processed": summary["processed"], "failed": summary["failed_shards"]}))
"""


def test_gpu_shards_reuse_the_worker_and_its_models(synth_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    done = subprocess.run(
        [sys.executable, "-c", BUILD_ON_A_DECLARED_GPU, str(synth_corpus), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary == {"processed": 4, "failed": []}

    state = read_state(fsspec.filesystem("file"), str(out))
    loads = [marker["stats"]["stage_seconds"]["load_models"] for marker in state.markers.values()]
    assert len(loads) == 4
    # One GPU slot: every shard ran in the worker that loaded the models (while warming up, or for
    # its first shard); a fresh worker per shard would show a load of seconds in each of them.
    assert sum(seconds > 0.5 for seconds in loads) <= 1, loads
