"""Write safety of an output (issue 11): one writer at a time (lease, fencing), deletion only of what
is provably ours and dead, metadata problems as errors, no partial shard visible to a plain hive
reader after a kill, resumable --rebuild, and a soak of concurrent writer processes with kills.

Everything drives the storage layer directly with fake tables (no Prefect, no Ray)."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as pds
import pytest
import storage_writers as writers
from conftest import moto_s3
from fsspec.implementations.local import LocalFileSystem

from faceshard.errors import FingerprintMismatch, OutputBusy, StorageError
from faceshard.storage import commit as commit_module
from faceshard.storage import fsio, lease
from faceshard.storage.commit import Output
from faceshard.storage.manifest import ShardPlan
from faceshard.storage.reader import read_table
from faceshard.storage.repair import repair_output
from faceshard.storage.status import dataset_status

TABLES = ("videos", "faces", "identities")
KEYS = {
    "videos": ("video_id",),
    "faces": ("video_id", "frame", "face"),
    "identities": ("video_id", "identity"),
}
CHANGED = {**writers.CONFIG, "embed": {"dtype": "float32"}}


# ---------------------------------------------------------------- helpers


def _open(uri: str, config: dict | None = None, **kwargs: Any) -> Output:
    return Output.open(uri, config=config or writers.CONFIG, weights=writers.WEIGHTS, **kwargs)


def _hive_rows(root: str, table: str, fs: Any = None) -> list[dict[str, Any]]:
    """The table as SPEC §10 tells other tools to read it, in canonical row order."""
    path = f"{root}/{table}"
    if not (fs or LocalFileSystem()).exists(path):
        return []
    dataset = pds.dataset(path, format="parquet", partitioning="hive", filesystem=fs)
    rows = dataset.to_table().to_pylist() if dataset.files else []
    return sorted(rows, key=lambda row: tuple(row[k] for k in KEYS[table]))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The rows of one clean, uncontended build."""
    root = str(tmp_path_factory.mktemp("clean") / "out")
    writers.build(root)
    return {name: _hive_rows(root, name) for name in TABLES}


def _markers(fs: Any, root: str) -> dict[int, dict[str, Any]]:
    """The winning commits, as the log replays them (issue 19: no per-shard marker files)."""
    return commit_module.read_state(fs, root).markers


def assert_exactly_one_clean_build(root: str, reference: dict, s3: Any = None) -> None:
    """Row for row the clean build, no video twice, every data file named by a marker, no staging."""
    fs = s3[1] if s3 else LocalFileSystem()
    for name in TABLES:
        got = _hive_rows(root, name, fs)
        assert len(got) == len(reference[name]), (
            f"{name}: {len(got)} rows, a clean build has {len(reference[name])}"
        )
        assert got == reference[name], f"{name}: rows differ from a clean build"
    markers = _markers(fs, root)
    named = {
        f"{root}/{entry['path']}" for m in markers.values() for es in m["files"].values() for entry in es
    }
    on_disk = {p for name in TABLES for p in fsio.list_files(fs, f"{root}/{name}")}
    assert on_disk == named, f"orphans: {sorted(on_disk - named)[:3]}, missing: {sorted(named - on_disk)[:3]}"
    assert all(m["published"] for m in markers.values())
    assert fsio.list_files(fs, f"{root}/_faceshard/staging") == []
    status = dataset_status(f"s3://{root}", s3[0]) if s3 else dataset_status(root)
    assert (status["committed"], status["failed"], status["pending"]) == (len(writers.plans()), 0, 0)


def _data_snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for name in TABLES for p in sorted((root / name).rglob("*.parquet"))}


# ---------------------------------------------------------------- 1. two builds at once


def _race_two_builds(uri: str, storage_options: dict | None, wait_s: float) -> list[tuple[str, str, Any]]:
    ctx = multiprocessing.get_context("fork")  # independent processes, without spawn's import time
    start, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=writers.build_in_child, args=(start, results, name, uri, storage_options, wait_s))
        for name in ("A", "B")
    ]
    for proc in procs:
        proc.start()
    outcomes = sorted(results.get(timeout=300) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
    return outcomes


def _check_race(outcomes: list[tuple[str, str, Any]], wait_s: float) -> None:
    errors = [o for o in outcomes if o[1] == "error"]
    assert not errors, errors[0][2]
    assert len(outcomes) == 2, outcomes
    done = [o[2] for o in outcomes if o[1] == "done"]
    busy = [o[2] for o in outcomes if o[1] == "busy"]
    # Every shard committed by exactly one of the two builds.
    assert sorted(s for d in done for s in d["committed"]) == [p.shard_id for p in writers.plans()], outcomes
    if wait_s:
        assert len(done) == 2 and done[0]["epoch"] != done[1]["epoch"], outcomes
    else:  # started together: the second refuses naming the first, or (rarely) came after it
        assert len(done) == 2 or (len(done) == 1 and len(busy) == 1), outcomes
    for message in busy:
        assert "is being built by" in message and "pid" in message and "--wait" in message


@pytest.mark.parametrize("wait_s", [0.0, 60.0], ids=["second-refuses", "second-waits"])
def test_two_builds_at_once_on_local_disk_commit_each_shard_once(
    tmp_path: Path, reference, wait_s: float
) -> None:
    root = str(tmp_path / "out")
    _check_race(_race_two_builds(root, None, wait_s), wait_s)
    assert_exactly_one_clean_build(root, reference)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Any]]:
    """moto's S3 server on a free port: (storage options, an s3fs filesystem on it)."""
    import s3fs

    with moto_s3("safety") as options:
        yield options, s3fs.S3FileSystem(**options)


def test_s3_create_if_absent_is_a_conditional_put_exactly_one_racer_wins(s3) -> None:
    _, fs = s3
    path = f"safety/cas-{uuid.uuid4().hex}/lease.json"
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def racer(i: int) -> None:
        barrier.wait()
        if fsio.create_if_absent(fs, path, f"racer {i}".encode()):
            wins.append(i)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1 and fs.cat_file(path).decode() == f"racer {wins[0]}"
    assert not fsio.create_if_absent(fs, path, b"late")


@pytest.mark.parametrize("wait_s", [0.0, 60.0], ids=["second-refuses", "second-waits"])
def test_two_builds_at_once_on_s3_commit_each_shard_once(s3, reference, wait_s: float) -> None:
    options, _ = s3
    root = f"safety/race-{uuid.uuid4().hex[:8]}"
    _check_race(_race_two_builds(f"s3://{root}", options, wait_s), wait_s)
    assert_exactly_one_clean_build(root, reference, s3)


# ---------------------------------------------------------------- lease: holder, expiry, fencing


def test_status_names_the_lease_holder_and_a_stale_or_dead_holder_is_taken_over(tmp_path: Path) -> None:
    root = str(tmp_path / "out")
    out = _open(root)
    held = dataset_status(root)["lease"]
    assert (held["state"], held["pid"], held["epoch"]) == ("held", os.getpid(), 1)
    assert f"pid {os.getpid()}" in held["holder"] and held["owner"] and held["host"] == lease.host_id()
    out.close()
    assert dataset_status(root)["lease"]["state"] == "released"

    def plant(epoch: int, **fields: Any) -> None:
        now = time.time()
        record = {"epoch": epoch, "token": "t", "owner": "alice", "host": "gpu-node-7", "pid": 4242}
        record |= {"heartbeat_at": now, "expires_at": now + 60, "ttl_s": 60.0, "released": False}
        record |= {
            "pid_start": None,
            "acquired_at": "2026-01-01T00:00:00+00:00",
            "heartbeat_s": 15.0,
            "beat": 0,
        }
        (tmp_path / "out" / lease.epoch_file(epoch)).write_text(json.dumps(record | fields))

    plant(2)  # a live build on another host
    with pytest.raises(OutputBusy, match=r"being built by alice on gpu-node-7 pid 4242 \(epoch 2"):
        _open(root)
    assert dataset_status(root)["lease"]["state"] == "held"
    # Its heartbeat stopped: taken over once this process has seen the record unchanged for its TTL
    # (issue 19: never on the holder's timestamps alone).
    plant(3, heartbeat_at=time.time() - 120, expires_at=time.time() - 60, ttl_s=1.0, heartbeat_s=0.25)
    started = time.monotonic()
    with _open(root) as taken:
        assert taken.lease.epoch == 4 and time.monotonic() - started >= 1.0
    dead = subprocess.Popen(["true"])
    dead.wait()
    plant(5, host=lease.host_id(), pid=dead.pid)  # this host, a process that is gone: no need to wait
    with _open(root) as taken:
        assert taken.lease.epoch == 6


def test_a_writer_whose_lease_was_taken_over_cannot_commit(tmp_path: Path) -> None:
    root = str(tmp_path / "out")
    plans = writers.plans()
    out = _open(root, lease_ttl_s=1.0)
    out.set_plan(plans)
    worker = __import__("pickle").loads(__import__("pickle").dumps(out))  # what a Ray worker holds
    out._held._stop.set()  # the driver hangs: no more heartbeats
    with _open(root, wait_s=10) as successor:  # takes the lease over once the heartbeat stopped
        with pytest.raises(commit_module.Superseded, match="superseded"):
            worker.commit_shard(plans[0], writers.tables(plans[0]), {})
        with pytest.raises(commit_module.Superseded, match="superseded"):
            out.record_failure(plans[1], "late")
        assert successor.pending(plans) == plans and successor.failures() == {}


def _hold_for(root: str, seconds: float, ready: Any) -> None:
    with _open(root):
        ready.set()
        time.sleep(seconds)


def test_a_second_build_waits_for_the_holder_and_then_resumes(tmp_path: Path) -> None:
    root = str(tmp_path / "out")
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_for, args=(root, 1.5, ready))
    holder.start()
    assert ready.wait(30)
    with pytest.raises(OutputBusy, match=f"pid {holder.pid} "):
        _open(root)
    started = time.monotonic()
    with _open(root, wait_s=30) as second:
        assert second.lease.epoch == 2
        waited = time.monotonic() - started
    holder.join(10)
    assert waited > 0.3 and dataset_status(root)["lease"]["state"] == "released"


# ---------------------------------------------------------------- 2. listings that lag


@pytest.mark.parametrize("hidden", ["data file", "published marker", "unpublished marker"])
def test_a_listing_that_omits_a_file_deletes_nothing(
    tmp_path: Path, monkeypatch, reference, hidden: str
) -> None:
    root = tmp_path / "out"
    plans = writers.plans()
    out = _open(str(root))
    out.set_plan(plans)
    for plan in plans[:-1]:
        out.commit_shard(plan, writers.tables(plan), {})
    if hidden == "unpublished marker":  # killed right after the commit point of the last shard
        monkeypatch.setattr(Output, "_move_into_place", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            out.commit_shard(plans[-1], writers.tables(plans[-1]), {})
        monkeypatch.undo()
        victim = _commit_entry(root, plans[-1].shard_id)
    elif hidden == "published marker":
        victim = _commit_entry(root, 2)
    else:
        victim = sorted((root / "faces").rglob("*.parquet"))[3]
    committed = {p: p.read_bytes() for name in TABLES for p in (root / name).rglob("*.parquet")}
    markers = sorted((root / "_faceshard" / "log").glob("*.json"))
    staged = {
        p.relative_to(root / "_faceshard" / "staging"): p.read_bytes()
        for p in (root / "_faceshard" / "staging").rglob("*.parquet")
    }
    real_find = LocalFileSystem.find

    def lagging_find(self, path, *args, **kwargs):
        found = real_find(self, path, *args, **kwargs)
        if isinstance(found, dict):
            return {k: v for k, v in found.items() if Path(k) != victim}
        return [p for p in found if Path(p) != victim]

    monkeypatch.setattr(LocalFileSystem, "find", lagging_find)
    reopened = _open(str(root))
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in committed if p.exists()} == committed  # nothing committed went
    assert all(p.exists() for p in markers)
    for relative, data in staged.items():  # staged files of the committed shard moved into place
        assert (root / Path(*relative.parts[1:])).read_bytes() == data
    with reopened:
        for plan in reopened.pending(plans):
            reopened.commit_shard(plan, writers.tables(plan), {})
    assert_exactly_one_clean_build(str(root), reference)


def _commit_entry(root: Path, shard: int) -> Path:
    """The log entry that committed `shard` last (issue 19: commits are log entries)."""
    found = [
        p
        for p in sorted((root / "_faceshard" / "log").glob("*.json"))
        if (e := json.loads(p.read_text()))["kind"] == "commit" and e["marker"]["shard"] == shard
    ]
    return found[-1]


# ---------------------------------------------------------------- 3. metadata problems are errors


def _build_with_one_shard_left(root: Path) -> list[ShardPlan]:
    plans = writers.plans()
    with _open(str(root)) as out:
        out.set_plan(plans)
        for plan in plans[:-1]:
            out.commit_shard(plan, writers.tables(plan), {})
    return plans


def _finish(root: Path) -> None:
    writers.build(str(root))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not an object", "deleted"])
def test_unreadable_identity_refuses_and_repair_restores_it(tmp_path: Path, reference, damage: str) -> None:
    """`_faceshard.json` only says "a faceshard output, layout 3"; the metadata is in the log."""
    root = tmp_path / "out"
    _build_with_one_shard_left(root)
    meta = root / "_faceshard.json"
    before = _data_snapshot(root)
    if damage == "garbage":
        meta.write_bytes(b"\x00\x13 not json")
    elif damage == "truncated":
        meta.write_bytes(meta.read_bytes()[:20])
    elif damage == "not an object":
        meta.write_text("[1, 2, 3]")
    else:
        meta.unlink()

    for config in (writers.CONFIG, CHANGED):  # neither the original nor another config gets in
        with pytest.raises(StorageError, match=r"_faceshard.json.*faceshard repair"):
            _open(str(root), config)
    if damage != "deleted":  # a missing identity beside a log: readers still read the log
        with pytest.raises(StorageError, match=r"_faceshard.json: the output identity is invalid: .*repair"):
            dataset_status(str(root))
        with pytest.raises(StorageError, match="repair"):
            read_table(str(root), "videos")
    assert _data_snapshot(root) == before  # nothing was deleted or rewritten

    report = repair_output(str(root))
    assert report["actions"] and _data_snapshot(root) == before
    with pytest.raises(FingerprintMismatch):
        _open(str(root), CHANGED)
    _finish(root)  # the original configuration resumes: only the last shard is built
    assert_exactly_one_clean_build(str(root), reference)


@pytest.mark.parametrize("damaged", ["plan", "marker", "committed file"])
def test_unreadable_plan_or_marker_refuses_and_repair_sets_it_aside(
    tmp_path: Path, reference, damaged: str
) -> None:
    root = tmp_path / "out"
    _build_with_one_shard_left(root)
    before = _data_snapshot(root)
    if damaged == "plan":
        next((root / "_faceshard").glob("plan-*.parquet")).write_text("PAR1 not a plan")
    elif damaged == "marker":
        _commit_entry(root, 2).write_text("")
    else:
        victim = next((root / "faces").rglob("shard=000002/*.parquet"))
        victim.unlink()
        del before[victim]
    if damaged != "committed file":
        with pytest.raises(StorageError, match=r"(unreadable|invalid).*Nothing was changed.*repair"):
            _open(str(root))
        assert _data_snapshot(root) == before
        assert dataset_status(str(root))["ok"] is False
    else:  # never noticed by a listing, never a reason to delete: status --verify reports it
        _open(str(root)).close()
        assert _data_snapshot(root) == before
        assert dataset_status(str(root), verify=True)["corrupt_files"][0]["problem"] == "missing"

    report = repair_output(str(root))
    assert report["actions"], report
    quarantine = root / "_faceshard" / "quarantine"
    if damaged != "plan":  # the shard's files were set aside, not deleted: it is pending again
        aside = {p.name for p in quarantine.rglob("*.parquet")}
        assert aside and aside == {p.name for p in before if "shard=000002" in str(p)}
    _finish(root)
    assert_exactly_one_clean_build(str(root), reference)


# ---------------------------------------------------------------- 4. --rebuild touches only our files


def test_rebuild_deletes_only_what_our_markers_name(tmp_path: Path) -> None:
    root = tmp_path / "out"
    writers.build(str(root))
    foreign = {
        root / "videos" / "clip_000.mp4": b"a user's video",
        root / "videos" / "split=train" / "notes.txt": b"my notes",
        root / "faces" / "split=train" / "shard=000000" / "mine.parquet": b"not written by faceshard",
        root / "README.md": b"dataset card",
    }
    for path, data in foreign.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # A Parquet file of the user's inside a table folder would be read as rows beside the rebuilt
    # ones: --rebuild refuses, names it, and changes nothing (issue 19); the user moves it out.
    mine = root / "faces" / "split=train" / "shard=000000" / "mine.parquet"
    with pytest.raises(StorageError, match=r"refusing --rebuild: .*shard=000000/mine.parquet"):
        _open(str(root), CHANGED, rebuild=True)
    assert {p: p.read_bytes() for p in foreign} == foreign
    assert dataset_status(str(root))["committed"] == len(writers.plans())
    mine.unlink()
    del foreign[mine]
    with _open(str(root), CHANGED, rebuild=True) as out:
        assert dataset_status(str(root))["committed"] == 0
        assert not [p for name in TABLES for p in (root / name).rglob("part-*.parquet")]
        assert {p: p.read_bytes() for p in foreign} == foreign
        plans = writers.plans()
        out.set_plan(plans)
        out.commit_shard(plans[0], writers.tables(plans[0]), {})
    assert {p: p.read_bytes() for p in foreign} == foreign


# ---------------------------------------------------------------- 5. + 6. kills at every step

STEPS = (
    (fsio, "put_bytes"),
    (fsio, "create_if_absent"),
    (fsio, "remove_files"),
    (fsio, "remove_tree"),
    (Output, "_move_into_place"),
    (LocalFileSystem, "rm_file"),  # each file of a deletion is a step of its own
)


def _killed_at(step: int | None, action: Callable[[Callable[[], None]], None]) -> int:
    """Run `action(arm)` in a forked child that SIGKILL-style exits (`os._exit`, no cleanup at all)
    right before its `step`-th storage side effect after `arm()`; returns the number of side
    effects when `step` is None (the whole action ran)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: count, die, or report
        try:
            os.close(read)
            count = [0]
            armed = [False]

            def counting(owner: Any, name: str) -> None:
                real = getattr(owner, name)

                def side_effect(*args: Any, **kwargs: Any) -> Any:
                    if armed[0]:
                        count[0] += 1
                        if count[0] == step:
                            os._exit(137)
                    return real(*args, **kwargs)

                setattr(owner, name, side_effect)

            for owner, name in STEPS:
                counting(owner, name)
            action(lambda: armed.__setitem__(0, True))
            os.write(write, str(count[0]).encode())
            os._exit(0)
        except BaseException:
            import traceback

            traceback.print_exc()
            os._exit(1)
    os.close(write)
    with os.fdopen(read) as pipe:
        reported = pipe.read()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code == (0 if step is None else 137), f"child ended with {code}"
    return int(reported) if step is None else step


def assert_no_partial_shard_visible(root: Path, *, unnamed_allowed: bool = False) -> None:
    """What a plain hive reader sees right after a kill: no row twice; every visible `videos` row
    with exactly its faces and identities rows; every visible file committed (named by its shard's
    marker, or by the commit it replaces)."""
    rows = {name: _hive_rows(str(root), name) for name in TABLES}
    for name in TABLES:
        keys = Counter(tuple(row[k] for k in KEYS[name]) for row in rows[name])
        assert not [k for k, n in keys.items() if n > 1], f"{name}: rows visible twice"
    faces = Counter(row["video_id"] for row in rows["faces"])
    identities = Counter(row["video_id"] for row in rows["identities"])
    for video in rows["videos"]:
        got = (faces[video["video_id"]], identities[video["video_id"]])
        want = (video["n_faces"], video["n_identities"])
        assert got == want, f"{video['video_id']} (shard {video['shard']}) visible with {got} of {want} rows"
    if unnamed_allowed:
        return
    markers = _markers(LocalFileSystem(), str(root))
    for name in TABLES:
        for path in (root / name).rglob("*.parquet"):
            shard = int(re.search(r"shard=(\d+)", str(path)).group(1))
            marker = markers.get(shard)
            attempts = (
                {marker["attempt"], *(h["attempt"] for h in marker.get("history", []))} if marker else set()
            )
            assert any(a in path.name for a in attempts), f"{path} is visible but not committed"


def _commit_in_child(root: Path, plan: ShardPlan, replace: bool) -> Callable[[Callable[[], None]], None]:
    def action(arm: Callable[[], None]) -> None:
        out = _open(str(root))
        arm()
        if replace:
            video = ShardPlan(plan.shard_id, [v for v in plan.videos if v.video_id == "v00005"])
            out.replace_videos(plan, writers.fake_shard_tables(video, errors={"v00005": "decode failed"}), {})
        else:
            out.commit_shard(plan, writers.tables(plan), {})

    return action


@pytest.mark.parametrize("replace", [False, True], ids=["commit", "retry-failed-replacement"])
def test_a_kill_at_every_publish_step_never_shows_a_partial_shard(
    tmp_path: Path, reference, replace: bool
) -> None:
    plans = writers.plans()
    template = tmp_path / "template"
    with _open(str(template)) as out:
        out.set_plan(plans)
        for plan in plans if replace else plans[:-1]:
            out.commit_shard(plan, writers.tables(plan), {})
    plan = plans[1] if replace else plans[-1]  # shard 1 holds v00005, the failed video
    dry = tmp_path / "dry"
    shutil.copytree(template, dry)
    steps = _killed_at(None, _commit_in_child(dry, plan, replace))
    assert steps >= 12  # 6 staged files, marker, 6 moves (and deletions), published marker
    for step in range(1, steps + 1):
        root = tmp_path / f"kill-{step}"
        shutil.copytree(template, root)
        _killed_at(step, _commit_in_child(root, plan, replace))
        assert_no_partial_shard_visible(root)
        _finish(root)  # resume: rolls the commit forward or redoes the shard
        assert_exactly_one_clean_build(str(root), reference)
        shutil.rmtree(root)


def test_a_kill_anywhere_in_a_rebuild_resumes_it_or_reverts_to_the_original(
    tmp_path: Path, reference
) -> None:
    template = tmp_path / "template"
    writers.build(str(template))
    original_fingerprint = dataset_status(str(template))["fingerprint"]

    def rebuild(root: Path) -> Callable[[Callable[[], None]], None]:
        def action(arm: Callable[[], None]) -> None:
            arm()
            _open(str(root), CHANGED, rebuild=True).close()

        return action

    dry = tmp_path / "dry"
    shutil.copytree(template, dry)
    steps = _killed_at(None, rebuild(dry))
    assert steps > 2 * len(writers.plans())
    interrupted = 0
    for step in sorted({*range(1, steps + 1, max(1, steps // 6)), steps - 1}):
        root = tmp_path / f"kill-{step}"
        shutil.copytree(template, root)
        _killed_at(step, rebuild(root))
        assert_no_partial_shard_visible(root, unnamed_allowed=True)
        status = dataset_status(str(root))
        markers = _markers(LocalFileSystem(), str(root))
        assert status["committed"] == len(markers)  # status agrees with what is committed
        # A rebuild is one log entry (issue 19): killed anywhere, the output is the original one
        # (all shards) or the rebuilt one (none), never a mix.
        switched = status["fingerprint"] != original_fingerprint
        assert status["committed"] == (0 if switched else len(writers.plans()))
        interrupted += not switched

        original = tmp_path / f"original-{step}"
        shutil.copytree(root, original)
        if switched:
            with pytest.raises(FingerprintMismatch):
                _open(str(original))
        else:  # the ORIGINAL configuration, no flag: nothing was lost
            _finish(original)
            assert_exactly_one_clean_build(str(original), reference)

        with _open(str(root), CHANGED, rebuild=not switched):
            assert dataset_status(str(root))["committed"] == 0
            assert not [p for name in TABLES for p in (root / name).rglob("*.parquet")]
        writers.build(str(root), config=CHANGED)
        assert_exactly_one_clean_build(str(root), reference)
        shutil.rmtree(root)
        shutil.rmtree(original)
    assert interrupted >= 1


# ---------------------------------------------------------------- soak


SOAK_WRITERS = 4
SOAK_SECONDS = 12.0


def test_soak_concurrent_writer_processes_with_random_kills_then_one_clean_resume(
    tmp_path: Path, reference
) -> None:
    """SOAK_WRITERS processes build the same output over and over (each waits a random while for
    the lease, commits with random pauses, half the time also recommits a shard as retry-failed
    does) while the test SIGKILLs a random one at random moments and starts a fresh one. Then one
    clean resume: the output must equal a clean build row for row, with no duplicate and no orphan."""
    root = str(tmp_path / "out")
    errors = tmp_path / "writer-errors.log"
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(11)
    stop_at = time.time() + SOAK_SECONDS
    seeds = iter(range(10_000))

    def spawn() -> Any:
        proc = ctx.Process(target=writers.hammer, args=(root, next(seeds), stop_at, str(errors)))
        proc.start()
        return proc

    procs = [spawn() for _ in range(SOAK_WRITERS)]
    kills = 0
    while time.time() < stop_at - 0.5:
        time.sleep(rng.uniform(0.2, 1.2))
        victim = rng.randrange(len(procs))
        if procs[victim].is_alive():
            os.kill(procs[victim].pid, signal.SIGKILL)
            kills += 1
        procs[victim].join()
        procs[victim] = spawn()
    for proc in procs:  # the last ones die mid-flight too
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.join()
    epochs = lease.current(LocalFileSystem(), root)[0]
    markers = _markers(LocalFileSystem(), root)
    recommits = sum(len(m.get("history", [])) for m in markers.values())
    print(
        f"soak: {SOAK_WRITERS} writers, {SOAK_SECONDS:.0f} s, {kills} SIGKILLs, {epochs} lease epochs,"
        f" {len(markers)} shards committed, {recommits} recommits"
    )
    assert kills >= 10 and epochs >= 10
    logged = errors.read_text() if errors.exists() else ""
    unexpected = [e for e in logged.split("--- writer")[1:] if "refusing to commit" not in e]
    assert not unexpected, unexpected[0]

    assert_no_partial_shard_visible(Path(root))
    writers.build(root)  # one clean resume
    assert_exactly_one_clean_build(root, reference)


def test_cli_status_names_the_damage_and_repair_fixes_it(tmp_path: Path, reference) -> None:
    from typer.testing import CliRunner

    from faceshard.app.cli import app

    root = tmp_path / "out"
    _build_with_one_shard_left(root)
    (root / "_faceshard.json").write_text("{")
    runner = CliRunner()
    status = runner.invoke(app, ["status", str(root), "--json"])
    assert status.exit_code == 5 and "faceshard repair" in " ".join(status.output.split())
    repaired = runner.invoke(app, ["repair", str(root)])
    assert repaired.exit_code == 0 and "rewrote the invalid _faceshard.json" in repaired.output
    status = runner.invoke(app, ["status", str(root), "--json"])
    info = json.loads(status.output)
    assert (info["committed"], info["pending"], info["lease"]["state"]) == (3, 1, "released")
    assert runner.invoke(app, ["repair", str(root)]).output.strip() == "nothing to repair"
