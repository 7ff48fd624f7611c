"""Deployments that run: prefect.yaml deployed to a real Prefect server and run by a process worker,
and `faceshard build` on a Ray cluster started apart from it (`ray start --head`), both on
localhost, both as a user would run them; plus the static checks of prefect.yaml and serve.py."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import faceshard_cli
from prefect.flows import load_flow_from_entrypoint
from processes import free_port, session_members, stop_session, wait_until

from faceshard.config import config_from_tree
from faceshard.deployments.serve import deployment_parameters, scheduled_build
from faceshard.flows.build import build_dataset
from faceshard.flows.progress import PROGRESS_KEY, SHARDS_KEY
from faceshard.storage.status import dataset_status

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FAST = {"preset": "demo", "depth": {"enabled": False}, "embed": {"depth": False}}
TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def test_prefect_yaml_deployments_match_the_flow() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert spec["deployments"]
    assert spec["pull"] == []  # the flow is imported from the installed package: nothing to pull
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"], use_placeholder_flow=False)
        assert flow is build_dataset  # the module itself, as a worker imports it
        assert set(deployment["parameters"]) <= set(flow.parameters.properties), deployment["name"]
        cfg = config_from_tree(deployment["parameters"]["config"])
        assert cfg.preset == "mintime" and cfg.sampling.strategy == "per_second"
        assert deployment["parameters"].get("rebuild", False) is False  # scheduled runs only resume


def test_served_deployment_names_the_flow_by_module_with_resumable_parameters() -> None:
    deployment = scheduled_build("/data/m.csv", "s3://b/ds", "megatron", "0 2 * * *")
    assert deployment.entrypoint == "faceshard.flows.build.build_dataset"
    assert load_flow_from_entrypoint(deployment.entrypoint, use_placeholder_flow=False) is build_dataset
    assert deployment.parameters == deployment_parameters("/data/m.csv", "s3://b/ds", "megatron")
    assert deployment.parameters["rebuild"] is False
    assert config_from_tree(deployment.parameters["config"]).detect.backend == "dlib"


# -- running deployments (slow: a Prefect server, a Ray cluster, real builds)


def _api(url: str, path: str, body: dict | None = None) -> dict | list:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _healthy(url: str) -> bool:
    try:
        return _api(url, "/health") is True
    except OSError:
        return False


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` on a free localhost port with its own database; yields the API URL."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(home)}
    log = home / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: _healthy(url), 180, "prefect server", log)
        yield url
    finally:
        stop_session(server)


@pytest.fixture(scope="module")
def external_ray() -> Iterator[tuple[str, Path]]:
    """`ray start --head` on localhost with its own temp dir and ports; stopped (only it) at the end.

    Yields (address, session log directory). The temp dir is short on purpose: Ray's socket
    paths live in it and must fit in 107 bytes.
    """
    temp = Path(tempfile.mkdtemp(prefix="fsray-", dir="/tmp"))
    port = free_port()
    log = temp / "ray-start.log"
    command = [
        BIN / "ray",
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp}",
        "--num-cpus=2",
        "--object-store-memory=200000000",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-port={free_port()}",
    ]
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    with log.open("w") as out:
        head = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until(lambda: "Ray runtime started" in log.read_text(), 240, "ray start --head", log)
        yield f"127.0.0.1:{port}", temp / "session_latest" / "logs"
    finally:
        stop_session(head)
        shutil.rmtree(temp, ignore_errors=True)
    assert not session_members(head.pid), "processes of the cluster survived"


def _client_env(api_url: str) -> dict[str, str]:
    return {
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RAY_AUTH_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
    }


def _prefect(*args: str, env: dict[str, str], cwd: Path = REPO) -> str:
    done = subprocess.run(
        [BIN / "prefect", "--no-prompt", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _latest_artifact(api_url: str, key: str) -> dict:
    return _api(api_url, f"/artifacts/{key}/latest")


@pytest.mark.slow
def test_prefect_yaml_deploys_and_a_process_worker_runs_the_build(
    prefect_server: str, external_ray: tuple[str, Path], synth_corpus: Path, tmp_path: Path
) -> None:
    address, _ = external_ray
    env = os.environ | _client_env(prefect_server) | {"PREFECT_WORKER_QUERY_SECONDS": "1"}
    env["FACESHARD_RAY_ADDRESS"] = address  # the worker's cluster, as in docker/compose.yaml
    _prefect("work-pool", "create", "faceshard", "--type", "process", env=env)
    _prefect("deploy", "--all", env=env)  # from prefect.yaml, as documented there

    out = tmp_path / "dataset"
    params = {"manifest": str(synth_corpus), "out": str(out), "config": {**FAST, "shard_size": 2}}
    started = _prefect(
        "deployment", "run", "faceshard-build/nightly-forgerynet", "--params", json.dumps(params), env=env
    )
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", started).group(1)

    worker_log = tmp_path / "worker.log"
    with worker_log.open("w") as log:
        worker = subprocess.Popen(
            [BIN / "prefect", "worker", "start", "--pool", "faceshard", "--type", "process"],
            env=env,
            cwd=tmp_path,  # no checkout needed: the flow comes from the installed package
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def state() -> str:
        return _api(prefect_server, f"/flow_runs/{flow_run_id}")["state"]["type"]

    try:
        wait_until(lambda: state() in TERMINAL_STATES, 420, "the deployment's flow run", worker_log)
    finally:
        stop_session(worker)
    assert state() == "COMPLETED", worker_log.read_text()[-4000:]

    status = dataset_status(str(out))
    assert (status["shards_total"], status["committed"], status["failed"]) == (2, 2, 0)
    assert status["totals"]["videos"] == 4
    progress = _latest_artifact(prefect_server, PROGRESS_KEY)
    assert (progress["flow_run_id"], progress["data"]) == (flow_run_id, 100.0)
    shards = _latest_artifact(prefect_server, SHARDS_KEY)
    assert sorted(row["shard"] for row in json.loads(shards["data"])) == [0, 1]


BAR = re.compile(
    r"videos (\d+/\d+) [\d.]+ videos/s ETA [-:\d]+ failures (\d+)(?: \(\d+ shards?\))? shards (\d+/\d+)$"
)


def _frames(stderr: str) -> list[tuple[str, ...]]:
    """The bar's (videos, failures, shards) in the order drawn: one frame per line or carriage return."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", stderr)
    return [m.groups() for line in re.split(r"[\r\n]", text) if (m := BAR.search(line.rstrip()))]


@pytest.mark.slow
def test_build_on_an_external_ray_cluster_collects_shards_as_they_finish(
    prefect_server: str, external_ray: tuple[str, Path], synth_corpus: Path, tmp_path: Path
) -> None:
    address, ray_logs = external_ray
    drivers_before = set(ray_logs.glob("python-core-driver-*"))
    manifest = tmp_path / "manifest.csv"
    with (synth_corpus.parent / "manifest.csv").open() as src, manifest.open("w", newline="") as dst:
        rows = list(csv.DictReader(src))
        writer = csv.DictWriter(dst, [*rows[0].keys(), "video_id"])
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({**row, "path": str(synth_corpus.parent / row["path"]), "video_id": f"v{i}"})
    # Shard 0 is slow, shard 2 fails at its commit; the bar redraws as on a terminal.
    env = _client_env(prefect_server) | {
        "FACESHARD_FAULTS": "video:v0=sleep:6,commit:2=raise",
        "TTY_COMPATIBLE": "1",
        "TTY_INTERACTIVE": "1",
        "TERM": "xterm",
        "COLUMNS": "200",
    }
    sets = [f"runtime.ray_address={address}", "runtime.max_in_flight=2", "runtime.task_retries=0"]
    sets += ["depth.enabled=false", "embed.depth=false"]
    done = faceshard_cli(
        "build",
        str(manifest),
        "--out",
        str(tmp_path / "dataset"),
        "--root",
        str(synth_corpus.parent),
        "--shard-size",
        "1",
        *(arg for item in sets for arg in ("--set", item)),
        "--json",
        env=env,
    )
    assert done.returncode == 1, done.stderr[-4000:]  # one failed shard: the build finishes, exits 1
    summary = json.loads(done.stdout)
    assert (summary["processed"], [f["shard"] for f in summary["failed_shards"]]) == (3, [2])

    # It ran on that cluster: a new driver connected and process-shard tasks ran on its workers.
    assert set(ray_logs.glob("python-core-driver-*")) - drivers_before
    worker_logs = "".join(p.read_text(errors="replace") for p in ray_logs.glob("worker-*"))
    assert ":task_name:process-shard" in worker_logs

    # The live bar was drawn as the build started and again as videos and shards finished, failures counted.
    frames = list(dict.fromkeys(_frames(done.stderr)))
    assert list(dict.fromkeys(shards for _, _, shards in frames)) == ["0/4", "1/4", "2/4", "3/4", "4/4"]
    assert frames[-1] == ("4/4", "1", "4/4")

    # Prefect artifacts: progress at 100 %, one row per shard in the order the shards finished.
    assert _latest_artifact(prefect_server, PROGRESS_KEY)["data"] == 100.0
    table = json.loads(_latest_artifact(prefect_server, SHARDS_KEY)["data"])
    assert sorted(row["shard"] for row in table) == [0, 1, 2, 3]
    assert table[0]["shard"] != 0  # the slow shard 0 did not hold the others' outcomes back
    assert {row["shard"]: row["status"] for row in table}[2] == "failed"
