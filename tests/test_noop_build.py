"""A build with nothing to do answers from files alone, for every preset (#23).

Its weights check (part of the dataset fingerprint) finds each model's weights in the registry's
cards, the Hugging Face cache and $TORCH_HOME without importing torch, timm, torchvision or
transformers (`models.pretrained`), and the plan finds every shard committed before Prefect or Ray
is imported. Each case runs `faceshard build` in a fresh process on an output whose shards are all
committed, then reads that process's `sys.modules`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from faceshard.models.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "torchvision", "transformers", "facenet_pytorch", "ray", "prefect")
COMMIT = "0123456789abcdef0123456789abcdef01234567"

COMMITTED = """
import sys
from faceshard.config import load_config
from faceshard.flows import plan as planning
from faceshard.storage.commit import Output
from faceshard.storage.manifest import load_manifest
from faceshard.tasks import shard as shard_task
from tests.stub_build import StubProcessor

manifest, uri, preset = sys.argv[1:4]
cfg = load_config(preset, shard_size=2)
videos = load_manifest(manifest)
with Output.open(uri, config=cfg, weights=planning.dataset_weights(cfg)) as output:
    plan = planning.plan_output(output, videos, cfg, prune=False)
    output.apply_plan(plan)
    shard_task.get_processor = lambda _cfg: StubProcessor()
    for shard in planning.shards_to_run(output, videos, plan, False):
        shard_task.process_shard(shard, cfg, output)
"""

NO_OP = f"""
import json, sys
from faceshard.app.cli import app

try:
    app(args=["build", *sys.argv[1:]], prog_name="faceshard")
    code = 0
except SystemExit as exc:
    code = exc.code
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
print(json.dumps({{"code": code, "heavy": heavy}}))
"""

STATUS = """
import json, sys
from faceshard.storage.commit import read_metadata
from faceshard.storage.fsio import open_fs
from faceshard.storage.status import dataset_status

fs, root = open_fs(sys.argv[1])
print(json.dumps({"metadata": read_metadata(fs, root)["warnings"], "status": dataset_status(sys.argv[1])["warnings"]}))
"""


def _weights_home(root: Path) -> dict[str, str]:
    """What a user with every preset's weights has offline: each hub model in the Hugging Face cache
    and FaceNet's file in $TORCH_HOME/checkpoints (stand-in bytes: nothing is loaded)."""
    cache = root / "hf" / "hub"
    for card in MODELS.values():
        if "/" not in card.weights:  # a file, not a hub id
            continue
        repo = cache / f"models--{card.weights.replace('/', '--')}"
        snapshot = repo / "snapshots" / COMMIT
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text("{}")
        (snapshot / "model.safetensors").write_bytes(card.name.encode())
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
    checkpoints = root / "torch" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / MODELS["facenet"].weights).write_bytes(b"stand-in")
    return {"HF_HUB_CACHE": str(cache), "TORCH_HOME": str(root / "torch")}


@pytest.mark.parametrize(
    ("preset", "weights"),
    [
        ("demo", "random"),
        ("demo", "cached"),
        ("mintime", "cached"),
        ("megatron", "cached"),
        ("deepfakebench", "shipped"),
    ],
)
def test_a_no_op_build_imports_no_model_library_nor_prefect_nor_ray(
    synth_corpus: Path, tmp_path: Path, preset: str, weights: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "RAY_ADDRESS")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env |= {"TORCH_HOME": str(tmp_path / "no-torch-home")}
    if weights == "cached":
        env |= _weights_home(tmp_path / "weights")
    out = tmp_path / "out"
    committed = subprocess.run(
        [sys.executable, "-c", COMMITTED, str(synth_corpus), str(out), preset],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert committed.returncode == 0, committed.stderr[-3000:]

    args = [str(synth_corpus), "--out", str(out), "--preset", preset, "--shard-size", "2"]
    done = subprocess.run(
        [sys.executable, "-c", NO_OP, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"code": 0, "heavy": []}, done.stderr[-3000:]
    assert "2 shards, all committed: nothing to do" in done.stderr
    assert "processed        │ 0" in done.stdout
    assert done.stderr.count("RANDOM WEIGHTS") == (weights == "random")  # once: the summary's warnings
    assert not (tmp_path / "prefect-home" / "prefect.db").exists()
    # The build's warnings are in the output's metadata too, apart from `random_weights`, each once.
    status = subprocess.run(
        [sys.executable, "-c", STATUS, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    recorded = json.loads(status.stdout.strip().splitlines()[-1])
    assert [w.startswith("RANDOM WEIGHTS") for w in recorded["metadata"]] == [True] * (weights == "random")
    assert recorded["status"] == recorded["metadata"]


def test_the_registry_names_the_hub_weights_timm_would_load() -> None:
    """The cards answer for timm (its `default_cfgs`) in the driver: they must name what timm loads,
    in the files timm reads, or a no-op check would call weights present that a worker cannot load."""
    import timm.models

    from faceshard.models.pretrained import CHECKPOINT_FILES, embedder_hub_id

    embedders = [card for card in MODELS.values() if card.kind == "embedder"]
    assert embedders
    for card in embedders:
        assert embedder_hub_id(card.name) == timm.models.get_pretrained_cfg(card.name).hf_hub_id
    assert CHECKPOINT_FILES[:2] == ("model.safetensors", "pytorch_model.bin")  # timm/models/_hub.py


def test_torch_home_is_where_torch_hub_and_facenet_pytorch_look(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch.hub
    from facenet_pytorch.models.inception_resnet_v1 import get_torch_home

    from faceshard.models.identity import facenet_weight_candidates
    from faceshard.models.pretrained import torch_home

    for env in ({"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {}):
        monkeypatch.delenv("TORCH_HOME", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert torch_home() == Path(get_torch_home())
        hub = Path(torch.hub.get_dir()) / "checkpoints" / MODELS["facenet"].weights
        assert facenet_weight_candidates(None) == [Path(get_torch_home()) / "checkpoints" / hub.name, hub]
