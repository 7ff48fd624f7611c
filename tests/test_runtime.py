"""The embedded runtime's Prefect server: started without Prefect's server package in this process,
and a server that cannot start says why instead of hanging."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from faceshard.config import RuntimeConfig
from faceshard.flows.runtime import LocalApiServer, free_port, ray_init_kwargs


def test_local_server_answers_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    server = LocalApiServer(free_port())
    server.start()
    try:
        assert httpx.get(f"{server.api_url}/health").json() is True
    finally:
        server.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.api_url}/health", timeout=2)
    assert not list((tmp_path / "home").glob("faceshard-server-*.log"))


def test_a_server_that_cannot_start_reports_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = LocalApiServer(taken.getsockname()[1], timeout_s=60)
        with pytest.raises(RuntimeError, match="exited with code"):
            server.start()


def run_in_fresh_driver(code: str, prefect_home: Path, **env: str) -> str:
    """`code` in a new Python process with no server or cluster of this session's: its stdout."""
    base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "RAY_ADDRESS")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=base | {"PREFECT_HOME": str(prefect_home)} | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


WORKER_ENV_PROBE = """
import json, os, ray
from faceshard.config import RuntimeConfig
from faceshard.flows.runtime import local_runtime

with local_runtime(RuntimeConfig(num_cpus=1)):
    seen = ray.get(ray.remote(lambda: {k: os.environ.get(k) for k in ("PREFECT_API_URL", "HF_HUB_OFFLINE")}).remote())
    print(json.dumps({"driver": os.environ["PREFECT_API_URL"], "worker": seen}))
"""


def test_a_local_clusters_workers_see_the_drivers_settings(tmp_path: Path) -> None:
    """The cluster `local_runtime` starts inherits the driver's environment, so its job needs no
    runtime_env (one would make Ray start fresh workers instead of using the ones it prestarted)."""
    stdout = run_in_fresh_driver(WORKER_ENV_PROBE, tmp_path / "home", HF_HUB_OFFLINE="1")
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["worker"] == {"PREFECT_API_URL": report["driver"], "HF_HUB_OFFLINE": "1"}


def test_only_a_cluster_elsewhere_gets_the_settings_as_a_runtime_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert "runtime_env" not in ray_init_kwargs(RuntimeConfig())
    remote = ray_init_kwargs(RuntimeConfig(ray_address="ray://head:10001"))
    assert remote["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert ray_init_kwargs(RuntimeConfig())["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"


CHECK_FAILS = """
import os, ray
from faceshard.config import RuntimeConfig
from faceshard.flows.runtime import local_runtime

def check():
    print(os.environ["PREFECT_API_URL"], flush=True)  # the server was launched before the check ran
    raise ValueError("missing weights")

try:
    with local_runtime(RuntimeConfig(num_cpus=1), before_ray=check):
        raise SystemExit("the runtime came up")
except ValueError:
    print("ray", ray.is_initialized(), "url", os.environ.get("PREFECT_API_URL"))
"""


def test_a_failed_check_before_ray_stops_the_launched_server_and_never_starts_ray(tmp_path: Path) -> None:
    url, outcome = run_in_fresh_driver(CHECK_FAILS, tmp_path / "home").strip().splitlines()[-2:]
    assert outcome == "ray False url None"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/health", timeout=2)
    assert not list((tmp_path / "home").glob("faceshard-server-*.log"))


def test_a_server_that_cannot_launch_leaves_no_api_url_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from faceshard.flows.runtime import local_runtime

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("PREFECT_HOME", str(blocker))  # the server's log folder cannot be made
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(OSError), local_runtime(RuntimeConfig(num_cpus=1)):
        pytest.fail("the runtime came up")
    assert "PREFECT_API_URL" not in os.environ


def test_a_slow_server_is_one_line_saying_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from faceshard.flows.runtime import ServerStartError

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    server = LocalApiServer(free_port(), timeout_s=0.2)  # no server answers this soon
    with pytest.raises(ServerStartError) as caught:
        server.start()
    message = str(caught.value)
    assert "\n" not in message and "FACESHARD_SERVER_START_S" in message and "run the build again" in message
    assert server.process is None  # stopped, not left starting
    assert LocalApiServer(free_port()).timeout_s == 300  # the default outlasts a busy machine's start


def test_the_server_ignores_the_terminals_ctrl_c_and_has_its_own_process_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in a terminal signals the whole foreground group: the server must outlive it, so that the
    build stops it in order (it answered nothing and the flow crashed with httpx tracebacks before)."""
    import signal
    import time

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    server = LocalApiServer(free_port())
    server.start()
    try:
        assert server.process is not None
        assert os.getpgid(server.process.pid) == server.process.pid != os.getpgrp()
        os.kill(server.process.pid, signal.SIGINT)
        time.sleep(1)
        assert server.process.poll() is None
        assert httpx.get(f"{server.api_url}/health").json() is True
    finally:
        server.stop()


MONITOR_PROBE = """
import json, signal, ray
from faceshard.flows.runtime import stop_autoscaler_monitor

ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
monitor = ray._private.worker._global_node.all_processes["monitor"][0].process
stop_autoscaler_monitor()
code = monitor.wait(timeout=10)
ray.shutdown()
print(json.dumps({"monitor": code, "sigkill": -signal.SIGKILL}))
"""


def test_the_clusters_autoscaler_monitor_is_killed_not_waited_for() -> None:
    """`ray.shutdown` gives the monitor a 1-s SIGTERM grace it ignores; a build's own cluster kills it
    first (`local_runtime` calls this before `ray.shutdown`). If Ray's private node object moves, the
    helper does nothing and this test says so."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", MONITOR_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["monitor"] == report["sigkill"]


STOP_CHECK_PROBE = """
import json, os, sys, time, ray
from faceshard.flows.build import build_stopped

ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")

class SlowInbox:  # a VideoInbox that answers late, as one does on a busy machine
    def stopped(self):
        time.sleep(3)
        return False

inbox = ray.remote(num_cpus=0)(SlowInbox).remote()
idle = ray.remote(num_cpus=0)(lambda: (time.sleep(1), os.getpid())[1])
ray.get([idle.remote() for _ in range(3)])  # idle workers a released CPU could go to

def shard(ask):
    started = time.time()
    ask(inbox)
    time.sleep(0.5)
    return started, time.time()

def overlapped(ask):
    task = ray.remote(num_cpus=1)(shard)
    (a0, a1), (b0, b1) = sorted(ray.get([task.remote(ask), task.remote(ask)]))
    return b0 < a1

print(json.dumps({
    "helper": overlapped(build_stopped),
    "main_thread_get": overlapped(lambda inbox: ray.get(inbox.stopped.remote())),
}))
"""


def test_a_shard_asking_whether_the_build_stopped_keeps_its_cpu(tmp_path: Path) -> None:
    """On a 1-CPU cluster, two shards that each ask a slow inbox whether the build stopped run one after
    the other. A plain `ray.get` on the task's main thread gives the CPU up while it waits, and Ray
    starts the queued shard beside it on another worker (in a real build: 3 shards at once on 2 CPUs,
    the third loading every model again); `build_stopped` asks from a helper thread and keeps it."""
    stdout = run_in_fresh_driver(STOP_CHECK_PROBE, tmp_path / "home")
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report == {"helper": False, "main_thread_get": True}
