"""The embedded runtime's Prefect server: started without Prefect's server package in this process,
and a server that cannot start says why instead of hanging."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from faceshard.flows.runtime import LocalApiServer, free_port


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
