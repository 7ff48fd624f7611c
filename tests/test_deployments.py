"""The Prefect deployments users schedule: prefect.yaml and deployments/serve.py point at the real flow
with parameters it accepts and a config that resolves."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import yaml

from faceshard.config import config_from_tree
from faceshard.deployments.serve import deployment_parameters

REPO = Path(__file__).resolve().parents[1]


def _load_entrypoint(entrypoint: str):
    path, _, name = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


def test_prefect_yaml_deployments_match_the_flow() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        flow = _load_entrypoint(deployment["entrypoint"])
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment["parameters"]) <= accepted, deployment["name"]
        cfg = config_from_tree(deployment["parameters"]["config"])
        assert cfg.preset == "mintime" and cfg.sampling.strategy == "per_second"
        assert deployment["parameters"].get("rebuild", False) is False  # scheduled runs only resume


def test_served_deployment_runs_the_build_flow_with_resumable_parameters() -> None:
    from faceshard.flows.build import build_dataset

    params = deployment_parameters("/data/m.csv", "s3://b/ds", "megatron")
    deployment = build_dataset.to_deployment(name="nightly", cron="0 2 * * *", parameters=params)
    assert deployment.entrypoint.endswith("flows/build.py:build_dataset")
    assert deployment.parameters == params
    assert config_from_tree(params["config"]).detect.backend == "dlib"
