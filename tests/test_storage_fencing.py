"""Nothing committed is ever lost (issue 19): a build paused past its lease, with real processes,
on a local output and on S3 (moto's server); takeover without trusting clocks.

A build A is paused (SIGSTOP from outside, or a `step:<name>=stop-once` fault that makes it SIGSTOP
itself between two steps of a commit: lease, check, data, commit, publish, plan, record, delete),
a build B with a short TTL takes the output over and commits every shard, then A is let go
(SIGCONT): A must exit non-zero saying "superseded", and every row of the clean build must be
readable exactly once, through the reader and through a plain hive listing.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as pds
import pytest
import storage_writers as writers
from conftest import moto_s3

from faceshard.errors import OutputBusy
from faceshard.storage import fsio
from faceshard.storage.commit import Output, read_state
from faceshard.storage.reader import read_table
from faceshard.storage.records import DATA_FILE_RE
from faceshard.storage.status import dataset_status

REPO = Path(__file__).resolve().parents[1]
TABLES = ("videos", "faces", "identities")
KEYS = {
    "videos": ("video_id",),
    "faces": ("video_id", "frame", "face"),
    "identities": ("video_id", "identity"),
}
TTL_S = 2.0
STEPS = ("lease", "record", "plan", "check", "data", "commit", "publish", "delete")


def hive_rows(uri: str, table: str, options: dict | None) -> list[dict[str, Any]]:
    fs, root = fsio.open_fs(uri, options)
    path = fsio.join(root, table)
    if not fs.exists(path):
        return []
    dataset = pds.dataset(path, format="parquet", partitioning="hive", filesystem=fs)
    rows = dataset.to_table().to_pylist() if dataset.files else []
    return sorted(rows, key=lambda row: tuple(row[k] for k in KEYS[table]))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The rows of one clean, uncontended build."""
    root = str(tmp_path_factory.mktemp("clean") / "out")
    writers.build(root)
    return {name: hive_rows(root, name, None) for name in TABLES}


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    with moto_s3("fencing") as options:
        yield options


def assert_every_row_exactly_once(uri: str, options: dict | None, reference: dict) -> None:
    """Row for row the clean build (reader and hive listing), status agrees, and after one more open
    (the collector) exactly the committed files are left: no orphan, no staging."""
    for name in TABLES:
        assert hive_rows(uri, name, options) == reference[name], (
            f"{name}: hive rows differ from a clean build"
        )
        ids = read_table(uri, name, storage_options=options)["video_id"].to_pylist()
        assert sorted(ids) == sorted(r["video_id"] for r in reference[name]), f"{name}: reader rows differ"
    status = dataset_status(uri, options, verify=True)
    assert (status["committed"], status["pending"], status["problems"], status["corrupt_files"]) == (
        len(writers.plans()),
        0,
        [],
        [],
    )
    Output.open(uri, config=writers.CONFIG, weights=writers.WEIGHTS, storage_options=options).close()
    fs, root = fsio.open_fs(uri, options)
    named = {
        f"{root}/{p}"
        for m in read_state(fs, root).markers.values()
        for es in m["files"].values()
        for p in [e["path"] for e in es]
    }
    on_disk = {p for name in TABLES for p in fsio.list_files(fs, fsio.join(root, name))}
    assert on_disk == named, f"orphans {sorted(on_disk - named)[:3]}, missing {sorted(named - on_disk)[:3]}"
    assert fsio.list_files(fs, fsio.join(root, "_faceshard", "staging")) == []


def child_build(
    uri: str, options: dict | None, wait_s: float, faults: str | None = None, *extra: str
) -> subprocess.Popen:
    """`tests/storage_writers.py` as its own process (own interpreter, own heartbeat thread)."""
    env = {k: v for k, v in os.environ.items() if k != "FACESHARD_FAULTS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests")])
    if faults:
        env["FACESHARD_FAULTS"] = faults
    command = [sys.executable, str(REPO / "tests" / "storage_writers.py"), uri, json.dumps(options or {})]
    return subprocess.Popen(
        [*command, str(TTL_S), str(wait_s), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def process_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def wait_stopped(proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while process_state(proc.pid) != "T":
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(
                f"the build ended before its pause (rc {proc.returncode}):\n{out}\n{err[-3000:]}"
            )
        assert time.monotonic() < deadline, "the build never reached its pause"
        time.sleep(0.05)


def committed_count(uri: str, options: dict | None) -> int:
    try:
        return len(read_state(*fsio.open_fs(uri, options)).markers)
    except Exception:  # no output yet
        return 0


def paused_build_is_superseded(
    uri: str, options: dict | None, step: str, flags: Path, reference: dict
) -> None:
    if step == "sigstop":  # paused from outside, wherever it is, once it has committed a shard
        first = child_build(uri, options, 0.0, None, "retry", "delay=0.4")
        deadline = time.monotonic() + 90
        while committed_count(uri, options) < 1:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGSTOP)
    else:
        first = child_build(
            uri, options, 0.0, f"step:{step}=stop-once:{flags / f'stop-{uuid.uuid4().hex}'}", "retry"
        )
    try:
        wait_stopped(first)
        second = child_build(uri, options, 60.0)
        out, err = second.communicate(timeout=240)
        assert second.returncode == 0, err[-4000:]
        assert json.loads(out.strip().splitlines()[-1])["epoch"] > 1  # it took the lease over
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=240)
    assert first.returncode != 0, f"the superseded build exited 0:\n{out}\n{err[-3000:]}"
    assert "superseded" in err, err[-3000:]
    assert_every_row_exactly_once(uri, options, reference)


@pytest.mark.parametrize("step", ["sigstop", *STEPS])
def test_a_build_paused_past_its_lease_is_superseded_on_local_disk(
    tmp_path: Path, reference: dict, step: str
) -> None:
    paused_build_is_superseded(str(tmp_path / "out"), None, step, tmp_path, reference)


# Each S3 case takes about a minute (moto, two interpreters); FACESHARD_FENCING_ALL_STEPS=1 runs all.
S3_STEPS = (
    ["sigstop", *STEPS] if os.environ.get("FACESHARD_FENCING_ALL_STEPS") else ["sigstop", "commit", "delete"]
)


@pytest.mark.parametrize("step", S3_STEPS)
def test_a_build_paused_past_its_lease_is_superseded_on_s3(
    tmp_path: Path, s3: dict, reference: dict, step: str
) -> None:
    paused_build_is_superseded(f"s3://fencing/{uuid.uuid4().hex}", s3, step, tmp_path, reference)


# ---------------------------------------------------------------- takeover without trusting clocks


def _skewed_holder(root: str, offset_s: float, ready: Any, stop: Any) -> None:
    """A build on a machine whose clock is `offset_s` off: it heartbeats with its own timestamps."""
    real = time.time
    time.time = lambda: real() + offset_s  # type: ignore[assignment]
    with Output.open(root, config=writers.CONFIG, weights=writers.WEIGHTS, lease_ttl_s=1.0):
        ready.set()
        stop.wait(60)


@pytest.mark.parametrize("offset_s", [120.0, -120.0], ids=["ahead", "behind"])
def test_a_holder_whose_clock_is_off_is_not_taken_over_while_it_beats(
    tmp_path: Path, offset_s: float
) -> None:
    root = str(tmp_path / "out")
    ctx = multiprocessing.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_skewed_holder, args=(root, offset_s, ready, stop))
    holder.start()
    try:
        assert ready.wait(60)
        started = time.monotonic()
        with pytest.raises(OutputBusy, match="being built by"):  # 3 TTLs of watching: it beats
            Output.open(root, config=writers.CONFIG, weights=writers.WEIGHTS, wait_s=3.0)
        assert time.monotonic() - started >= 1.0  # a "stale" timestamp alone never decides
        os.kill(holder.pid, signal.SIGSTOP)  # now its heartbeat really stops
        started = time.monotonic()
        with Output.open(root, config=writers.CONFIG, weights=writers.WEIGHTS, wait_s=30.0) as taker:
            assert taker.lease.epoch == 2 and time.monotonic() - started >= 1.0
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        stop.set()
        holder.join(30)
    assert holder.exitcode != 0  # it left its `with` block superseded


def test_lease_ttl_and_heartbeat_are_settings(tmp_path: Path) -> None:
    from faceshard.config import RuntimeConfig

    runtime = RuntimeConfig(lease_ttl_s=7.0, lease_heartbeat_s=1.5)
    root = str(tmp_path / "out")
    with Output.open(
        root,
        config=writers.CONFIG,
        weights=writers.WEIGHTS,
        lease_ttl_s=runtime.lease_ttl_s,
        lease_heartbeat_s=runtime.lease_heartbeat_s,
    ):
        record = dataset_status(root)["lease"]
        assert (record["ttl_s"], record["heartbeat_s"]) == (7.0, 1.5)
    with pytest.raises(ValueError, match="heartbeat"):
        RuntimeConfig(lease_ttl_s=5.0, lease_heartbeat_s=5.0)


def test_no_faceshard_name_check_trusts_a_user_file() -> None:
    assert DATA_FILE_RE.match(
        "videos/split=train/shard=000001/part-20260101T000000-e000001-0123456789ab.parquet"
    )
    for name in (
        "videos/split=train/shard=000001/part-0.parquet",
        "videos/split=train/shard=000001/part-20260101T000000-0123456789ab.parquet",
        "../videos/split=train/shard=000001/part-20260101T000000-e000001-0123456789ab.parquet",
    ):
        assert not DATA_FILE_RE.match(name)
