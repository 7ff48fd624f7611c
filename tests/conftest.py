"""Shared fixtures: isolated Prefect/Ray settings, a synthetic corpus, and the real fixture clips."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from processes import stacks_of_session, stop_session

REPO = Path(__file__).resolve().parents[1]
# The real clips beside the repository; FACESHARD_FIXTURES points elsewhere (a user's clone has no
# ../shared: `FACESHARD_FIXTURES=/nonexistent make test` is how that clone's run is checked).
SHARED_FIXTURES = Path(os.environ.get("FACESHARD_FIXTURES") or REPO.parent / "shared" / "fixtures")
NO_SHARED = (
    f"needs the real ForgeryNet clips in {SHARED_FIXTURES} (the project's ../shared/fixtures, "
    "present in CI and on developer machines, absent from a user's clone)"
)

# Offline and quiet, before Prefect or Ray are imported by any test module.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """../shared/fixtures, or a skip that says why."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(NO_SHARED)
    return SHARED_FIXTURES


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic corpus (manifest + truth) shared by the end-to-end tests."""
    from faceshard.app.synth import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus"), n_videos=4, seed=0)


@pytest.fixture(scope="session")
def local_runtime(tmp_path_factory: pytest.TempPathFactory):
    """One Prefect API server and one local Ray cluster for every in-process build of the session.

    `run_build` uses both when they exist, exactly as it would a user's server and cluster, so
    Ray workers (and the models they loaded) are reused between builds.
    """
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from faceshard.flows.runtime import apply_local_defaults, prefect_api

    apply_local_defaults()
    import ray

    with prefect_api() as url:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        try:
            yield url
        finally:
            ray.shutdown()


def faceshard_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 900, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run the installed `faceshard` console script in a fresh process (its own Prefect and Ray)."""
    # The session's in-process server is not the subprocess's: it starts its own unless `env` names one.
    full_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | (env or {})
    exe = Path(sys.executable).with_name("faceshard")
    with subprocess.Popen(
        [str(exe), *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stacks = stacks_of_session(proc.pid)  # where it hung, for the failure report
            stop_session(proc)
            pytest.fail(
                f"`faceshard {' '.join(args)}` still ran after {timeout:.0f} s; its stacks:\n{stacks}"
            )
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[dict[str, Any]]:
    """moto's S3 server on a free localhost port with `bucket` created: yields s3fs storage options."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=bucket)
        yield {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            "skip_instance_cache": True,
        }
    finally:
        server.stop()
