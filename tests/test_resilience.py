"""Failure paths of whole builds through the real `faceshard` CLI, each in its own process (own
Prefect server, own Ray cluster): SIGKILL at random points, a real S3 endpoint with a transient
write error, and a shard that fails without failing the build."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pds
import pytest
from conftest import faceshard_cli, moto_s3

from faceshard.errors import StorageError
from faceshard.storage import fsio
from faceshard.storage.commit import read_state
from faceshard.storage.reader import read_table
from faceshard.storage.status import dataset_status

pytestmark = pytest.mark.slow

TABLES = ("videos", "faces", "identities")
FAST = ["--set", "depth.enabled=false", "--set", "embed.depth=false", "--shard-size", "1"]
N_VIDEOS = 6
ROW_KEYS = {
    "videos": ("video_id",),
    "faces": ("video_id", "frame", "face"),
    "identities": ("video_id", "identity"),
}
NONDETERMINISTIC = {"seconds"}  # wall-clock processing time of a video: differs between any two builds
TOKEN_VAR = "FACESHARD_TEST_BUILD_TOKEN"
BUILD_TIMEOUT_S = 600


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic clips: with one video a shard, enough shards for three kills to leave work over."""
    from faceshard.app.synth import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus"), n_videos=N_VIDEOS, seed=0)


@pytest.fixture(scope="module")
def build_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Offline, one Prefect home for the module's builds, no failpoints unless a test adds them."""
    return {
        "HF_HUB_OFFLINE": "1",
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
        "FACESHARD_FAULTS": "",
    }


def listed(uri: str, table: str, filesystem: Any = None) -> pds.Dataset | None:
    """The table exactly as SPEC §10 says other tools read it (None while the directory is absent)."""
    path = f"{uri}/{table}"
    if filesystem is None and not Path(path).is_dir():
        return None
    return pds.dataset(path, format="parquet", partitioning="hive", filesystem=filesystem)


def rows(table: pa.Table, name: str) -> list[dict[str, Any]]:
    """Rows in a canonical order, timing columns dropped: comparable between builds."""
    keys = ROW_KEYS[name]
    out = [{k: v for k, v in row.items() if k not in NONDETERMINISTIC} for row in table.to_pylist()]
    return sorted(out, key=lambda row: tuple(row[k] for k in keys))


def assert_same_rows(got: list[dict[str, Any]], expected: list[dict[str, Any]], what: str) -> None:
    """Row-for-row equality, floats exactly; on failure name the first row and columns that differ."""
    assert len(got) == len(expected), f"{what}: {len(got)} rows, expected {len(expected)}"
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        if a != b:
            columns = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            raise AssertionError(f"{what}: row {index} differs in {columns}: {a.get('video_id')}")


def markers(out: Path) -> dict[int, dict[str, Any]]:
    """The committed shards' records (the log's winning commits), by shard id."""
    try:
        return read_state(*fsio.open_fs(str(out))).log.markers
    except StorageError:  # no output yet, or its first entries are still being written
        return {}


def marker_stamps(out: Path) -> dict[int, str]:
    """The attempt of each published commit: final until its shard is committed again."""
    return {shard: marker["attempt"] for shard, marker in markers(out).items() if marker.get("published")}


def start_build(corpus: Path, out: Path, env: dict[str, str], token: str, log: Path) -> subprocess.Popen:
    """`faceshard build` in a new session: its process group holds the Prefect server, raylet and GCS."""
    full_env = {**os.environ, **env, TOKEN_VAR: token}
    full_env.pop("PREFECT_API_URL", None)
    exe = Path(sys.executable).with_name("faceshard")
    with log.open("ab") as sink:
        return subprocess.Popen(
            [str(exe), "build", str(corpus), "--out", str(out), *FAST, "--json"],
            env=full_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def build_processes(session: int, token: str) -> dict[int, str]:
    """Live processes of one build: its session, or anything carrying its token (a forked daemon)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            state, _ppid, _pgrp, sid = stat[stat.rindex(")") + 2 :].split()[:4]
            if state == "Z":
                continue
            if int(sid) == session or f"{TOKEN_VAR}={token}".encode() in (entry / "environ").read_bytes():
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found[int(entry.name)] = cmdline[:100]
        except (OSError, ValueError):
            continue
    return found


def kill_build(proc: subprocess.Popen, token: str, grace_s: float = 90) -> dict[int, str]:
    """SIGKILL the build's process group (driver, Prefect server, raylet, GCS) and wait for the rest
    of its session to go by itself: Ray workers sit in process groups of their own and must exit
    once their raylet is gone. Returns what was still running after `grace_s` (then killed by pid)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + grace_s
    while (left := build_processes(proc.pid, token)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:  # clean up after a failure; the caller asserts there was nothing to clean
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def wait_for(
    condition: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = BUILD_TIMEOUT_S
) -> bool:
    """Poll `condition` until true (True) or the build exits first (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return True


def progress_reached(out: Path, anchor: str, started_ns: int, markers_before: int) -> Callable[[], bool]:
    """'plan': this run opened the output (its `begin` log entry: the flow is running; an unchanged
    plan is not written again); 'first new marker': it committed a shard."""
    if anchor == "plan":
        return lambda: any(p.stat().st_mtime_ns >= started_ns for p in out.glob("_faceshard/log/*.json"))
    return lambda: out.exists() and len(markers(out)) > markers_before


def assert_only_committed_shards_visible(out: Path, reference: S3Build) -> set[int]:
    """(a) listing sees only files that a marker vouches for; (b) status and reader agree on them."""
    on_disk = markers(out)
    for name in TABLES:
        dataset = listed(str(out), name)
        if dataset is None:
            continue
        for file in dataset.files:
            shard = int(re.search(r"/shard=(\d+)/", file).group(1))
            assert shard in on_disk, f"{file} is visible but shard {shard} has no commit marker"
            referenced = {entry["path"] for entry in on_disk[shard]["files"][name]}
            assert os.path.relpath(file, out) in referenced, f"{file} is not in shard {shard}'s marker"
        visible = dataset.to_table()  # every visible file is a whole Parquet file
        if name == "videos" and visible.num_rows:
            ids = visible["video_id"].to_pylist()
            assert len(ids) == len(set(ids)), f"duplicate video rows visible: {Counter(ids).most_common(2)}"

    status = dataset_status(str(out))
    assert status["committed"] == len(on_disk) and status["failed"] == 0
    assert status["pending"] == status["shards_total"] - len(on_disk) == N_VIDEOS - len(on_disk)
    videos = read_table(str(out), "videos")
    ids = videos["video_id"].to_pylist()
    assert len(ids) == len(set(ids)) == sum(m["rows"]["videos"] for m in on_disk.values())
    assert set(videos["shard"].to_pylist()) == set(on_disk)
    for name in TABLES:  # what is committed already equals the uninterrupted build's rows
        assert_same_rows(rows(read_table(str(out), name), name), reference.reference(name, set(ids)), name)
    return set(on_disk)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A real S3 API (moto's server) on a free local port, with the bucket `bucket`."""
    with moto_s3("bucket") as options:
        yield options["client_kwargs"]["endpoint_url"]


@dataclass
class S3Build:
    """The module's one uninterrupted build, to `s3://bucket/ds`; its rows are the reference."""

    uri: str
    env: dict[str, str]
    fs: Any
    result: subprocess.CompletedProcess
    fault_flags: tuple[Path, Path]
    rows: dict[str, list[dict[str, Any]]]

    def reference(self, table: str, video_ids: set[str] | None = None) -> list[dict[str, Any]]:
        """The uninterrupted build's rows of `table` (of some videos) in canonical order."""
        found = self.rows[table]
        return found if video_ids is None else [row for row in found if row["video_id"] in video_ids]


@pytest.fixture(scope="module")
def s3_build(
    corpus: Path, build_env: dict[str, str], moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> S3Build:
    """`faceshard build` to S3 (endpoint and keys from the environment, as a user passes them) with
    two transient write errors injected: the build's first write (its lease record, in the driver)
    and the first commit's log entry (in a Ray worker). Retried writes change no rows, so this build is
    also the uninterrupted reference the interrupted builds must end up equal to."""
    import s3fs

    flags = tmp_path_factory.mktemp("faults")
    driver_flag, marker_flag = flags / "fired-first-write", flags / "fired-marker-1"
    env = {
        **build_env,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    # Log entry 4 is the first commit (1 begin, 2 metadata, 3 plan), created by a Ray worker.
    faults = f"put:0000000004.json=fail-once:{marker_flag},put:*=fail-once:{driver_flag}"
    uri = "s3://bucket/ds"
    done = faceshard_cli(
        "build", str(corpus), "--out", uri, *FAST, "--json", env={**env, "FACESHARD_FAULTS": faults}
    )
    assert done.returncode == 0, done.stderr[-4000:]
    fs = s3fs.S3FileSystem(
        key="testing",
        secret="testing",
        endpoint_url=moto_endpoint,
        client_kwargs={"region_name": "us-east-1"},
        skip_instance_cache=True,
    )
    # Read back with pyarrow + s3fs, exactly as SPEC §10 tells other tools to.
    tables = {name: rows(listed("bucket/ds", name, filesystem=fs).to_table(), name) for name in TABLES}
    return S3Build(uri, env, fs, done, (driver_flag, marker_flag), tables)


# ---------------------------------------------------------------- tests


def test_sigkill_at_random_points_shows_only_committed_shards_and_resumes_to_the_same_rows(
    corpus: Path, build_env: dict[str, str], s3_build: S3Build, tmp_path: Path
) -> None:
    out = tmp_path / "dataset"
    log = tmp_path / "builds.log"
    rng = random.Random(20240611)
    stretched = {**build_env, "FACESHARD_FAULTS": "video:*=sleep:2.5"}
    # Kill points anchored on what the build has reached (start-up time varies a lot on a shared
    # machine), each plus a seeded random delay: while shards commit; while a resumed build starts
    # its workers; while the resumed build commits again.
    kills = [
        ("first new marker", rng.uniform(0, 0.5)),
        ("plan", rng.uniform(0, 3.0)),
        ("first new marker", rng.uniform(0, 0.5)),
    ]
    committed: set[int] = set()
    for anchor, delay in kills:
        token = uuid.uuid4().hex
        started_ns = time.time_ns()
        before = len(markers(out)) if out.exists() else 0
        proc = start_build(corpus, out, stretched, token, log)
        try:
            reached = wait_for(progress_reached(out, anchor, started_ns, before), proc, anchor)
            assert reached, f"build ended before '{anchor}' (rc {proc.returncode}); see {log}"
            time.sleep(delay)
            assert proc.poll() is None, f"build finished before the kill at '{anchor}' + {delay:.2f}s"
        finally:
            strays = kill_build(proc, token)
        assert proc.returncode == -signal.SIGKILL
        assert not strays, f"processes of the killed build kept running: {strays}"
        now = assert_only_committed_shards_visible(out, s3_build)
        assert committed <= now, "a kill lost shards that were committed before"
        committed = now
    assert 0 < len(committed) < N_VIDEOS, f"the kills left {len(committed)} shards committed"

    stamps = marker_stamps(out)
    done = faceshard_cli("build", str(corpus), "--out", str(out), *FAST, "--json", env=build_env)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout)
    assert (summary["skipped"], summary["processed"]) == (len(committed), N_VIDEOS - len(committed))
    assert {n: s for n, s in marker_stamps(out).items() if n in stamps} == stamps, "a commit was redone"
    assert not list((out / "_faceshard" / "staging").rglob("*.parquet"))
    status = dataset_status(str(out))
    assert (status["committed"], status["failed"], status["pending"]) == (N_VIDEOS, 0, 0)
    for name in TABLES:
        got = rows(listed(str(out), name).to_table(), name)
        assert_same_rows(got, s3_build.reference(name), name)
    ids = read_table(str(out), "videos")["video_id"].to_pylist()
    assert len(ids) == len(set(ids)) == N_VIDEOS


def test_s3_build_retries_transient_writes_and_commits_every_shard(s3_build: S3Build) -> None:
    assert all(flag.exists() for flag in s3_build.fault_flags), "the transient faults never fired"
    summary = json.loads(s3_build.result.stdout)
    assert (summary["processed"], summary["failed_shards"]) == (N_VIDEOS, [])

    status = faceshard_cli("status", s3_build.uri, "--json", env=s3_build.env)
    assert status.returncode == 0, status.stderr[-4000:]
    info = json.loads(status.stdout)
    assert info["committed"] == info["shards_total"] == N_VIDEOS
    assert (info["failed"], info["pending"]) == (0, 0)

    fs = s3_build.fs
    # Retried in place by the storage layer, not by re-running the shard: no attempt left in staging.
    assert not [p for p in fs.find("bucket/ds/_faceshard") if "/staging/" in p]
    marker = read_state(fs, "bucket/ds").markers[1]
    assert marker["published"] and marker["history"] == []
    faces = s3_build.rows["faces"]
    assert len(faces) == info["totals"]["faces"] > 0
    assert all(len(face["emb_rgb"]) == 384 and face["crop"] for face in faces)
    videos = s3_build.rows["videos"]
    assert len({v["video_id"] for v in videos}) == len(videos) == N_VIDEOS
    assert {v["shard"] for v in videos} == set(range(N_VIDEOS))


def test_a_failed_shard_never_fails_the_build_and_a_rerun_commits_only_it(
    corpus: Path, build_env: dict[str, str], s3_build: S3Build, tmp_path: Path
) -> None:
    out = tmp_path / "dataset"
    faulty = {**build_env, "FACESHARD_FAULTS": "commit:1=raise"}
    done = faceshard_cli("build", str(corpus), "--out", str(out), *FAST, "--json", env=faulty)
    assert done.returncode == 1, done.stderr[-4000:]
    summary = json.loads(done.stdout)
    assert summary["processed"] == N_VIDEOS - 1
    assert [f["shard"] for f in summary["failed_shards"]] == [1]
    assert "injected fault at commit:1" in summary["failed_shards"][0]["error"]
    assert sorted(markers(out)) == [s for s in range(N_VIDEOS) if s != 1]

    status = faceshard_cli("status", str(out), "--json", env=build_env)
    assert status.returncode != 0
    info = json.loads(status.stdout)
    assert (info["shards_total"], info["committed"], info["failed"], info["pending"]) == (N_VIDEOS, 5, 1, 0)
    assert [f["shard"] for f in info["failed_shards"]] == [1]
    assert "InjectedFault: injected fault at commit:1" in info["failed_shards"][0]["error"]
    plain = faceshard_cli("status", str(out), env=build_env)
    assert plain.returncode != 0 and "injected fault at commit:1" in " ".join(plain.stdout.split())

    stamps = marker_stamps(out)
    data = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    done = faceshard_cli("build", str(corpus), "--out", str(out), *FAST, "--json", env=build_env)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout)
    assert (summary["processed"], summary["skipped"], summary["failed_shards"]) == (1, N_VIDEOS - 1, [])
    after = marker_stamps(out)
    assert set(after) - set(stamps) == {1}
    assert {n: after[n] for n in stamps} == stamps, "a committed shard was re-committed"
    assert {p: p.stat().st_mtime_ns for p in data} == data, "a committed shard's files changed"
    assert 1 not in read_state(*fsio.open_fs(str(out))).failures

    status = faceshard_cli("status", str(out), "--json", env=build_env)
    assert status.returncode == 0, status.stdout + status.stderr
    info = json.loads(status.stdout)
    assert (info["committed"], info["failed"], info["pending"]) == (N_VIDEOS, 0, 0)
    for name in TABLES:
        got = rows(listed(str(out), name).to_table(), name)
        assert_same_rows(got, s3_build.reference(name), name)
