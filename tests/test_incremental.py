"""Builds over a dataset's life (SPEC §11): add, remove, relocate, mix manifests, prune, resume.

Through the flow's own planning and commit path with a stub processor (tests/stub_build.py): no
Prefect, Ray or models, so each build takes well under a second and every processed video is seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.dataset as pds
import pytest
from stub_build import WEIGHTS, StubProcessor, stub_build

from faceshard.config import BuildConfig
from faceshard.errors import FingerprintMismatch
from faceshard.flows import plan as planning
from faceshard.storage import fsio
from faceshard.storage.commit import Output, read_state
from faceshard.storage.plan import PriorPlan, plan_build
from faceshard.storage.reader import read_table
from faceshard.storage.repair import repair_output
from faceshard.storage.status import dataset_status

TABLES = ("videos", "faces", "identities")


def write_manifest(path: Path, names: list[str], prefix: str = "clips") -> str:
    """A manifest of `<prefix>/<name>/video.mp4` rows (ForgeryNet's shape: one file name for all)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,split"] + [
        f"{prefix}/{n}/video.mp4,{i % 2},{'train' if i % 3 else 'val'}" for i, n in enumerate(names)
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def ids(names: list[str], prefix: str = "clips") -> list[str]:
    return [f"{prefix}/{n}/video.mp4" for n in names]


def committed_files(out: Path) -> dict[str, tuple[int, str]]:
    """Every data file and log entry: path → (mtime, sha256). Committed files never change."""
    found = {}
    for path in [*out.glob("*/split=*/shard=*/*.parquet"), *out.glob("_faceshard/log/*.json")]:
        found[str(path.relative_to(out))] = (
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
    return found


def data_files_of(files: dict[str, tuple[int, str]]) -> dict[str, tuple[int, str]]:
    return {k: v for k, v in files.items() if not k.startswith("_faceshard/")}


def data_files(out: Path) -> dict[str, tuple[int, str]]:
    return data_files_of(committed_files(out))


def plan_doc(out: Path) -> dict:
    """The output's current plan record (issue 19: a log entry, no plan.json)."""
    return read_state(*fsio.open_fs(str(out))).plan


def everything(out: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(out)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in out.rglob("*")
        if p.is_file()
    }


def hive_rows(out: Path, table: str) -> list[dict]:
    """The table as a plain hive reader sees it (SPEC §10), canonical order, timings dropped."""
    read = pds.dataset(str(out / table), format="parquet", partitioning="hive").to_table().to_pylist()
    return sorted(read, key=lambda r: (r["video_id"], r.get("frame", 0), r.get("identity", 0)))


def video_ids(out: Path) -> list[str]:
    found = read_table(str(out), "videos")["video_id"].to_pylist()
    assert len(found) == len(set(found)), "a video is committed twice"
    assert sorted(r["video_id"] for r in hive_rows(out, "videos")) == sorted(found), (
        "hive and reader disagree"
    )
    return sorted(found)


NAMES = [f"n{i:02d}" for i in range(6)]


def test_added_videos_anywhere_are_the_only_ones_processed_and_no_committed_file_changes(tmp_path) -> None:
    out = tmp_path / "out"
    first = StubProcessor()
    stub_build(write_manifest(tmp_path / "m.csv", NAMES), str(out), first)
    assert sorted(first.processed) == ids(NAMES)
    before = committed_files(out)
    markers_before = set(read_state(*fsio.open_fs(str(out))).markers)

    grown = ["a-first", *NAMES[:3], "m-middle", *NAMES[3:], "z-last"]
    random.Random(0).shuffle(grown)  # where a row sits does not matter
    second = StubProcessor()
    result = stub_build(write_manifest(tmp_path / "m.csv", grown), str(out), second)

    assert sorted(second.processed) == ids(["a-first", "m-middle", "z-last"])
    assert (result["videos_skipped"], result["videos_to_process"], result["not_in_manifest"]) == (6, 3, 0)
    assert min(result["ran"]) > max(markers_before), "new videos go to new shards"
    after = committed_files(out)
    assert {k: after[k] for k in before} == before, "a committed file or marker changed"
    assert video_ids(out) == sorted(ids(grown))
    status = dataset_status(str(out))
    assert (status["committed"], status["pending"], status["failed"], status["not_in_manifest"]) == (
        5,
        0,
        0,
        0,
    )


def test_removed_videos_stay_reported_until_prune_removes_only_them(tmp_path) -> None:
    out = tmp_path / "out"
    stub_build(write_manifest(tmp_path / "m.csv", NAMES), str(out), StubProcessor())
    plan = plan_doc(out)
    by_shard = (
        pl.read_parquet(out / plan["videos_file"]).group_by("shard", maintain_order=True).agg("video_id")
    )
    whole, partial, untouched = by_shard.rows()  # three shards of two videos
    removed = [*whole[1], partial[1][0]]
    kept_names = [n for n in NAMES if ids([n])[0] not in removed]
    before = committed_files(out)

    run = StubProcessor()
    result = stub_build(write_manifest(tmp_path / "m.csv", kept_names), str(out), run)
    assert run.processed == [] and result["not_in_manifest"] == 3 and result["videos_skipped"] == 3
    assert data_files(out) == data_files_of(before), "rows of removed videos were touched without --prune"
    assert {k: committed_files(out)[k] for k in before} == before  # the log only grows
    assert video_ids(out) == ids(NAMES)
    assert dataset_status(str(out))["not_in_manifest"] == 3

    pruned = stub_build(write_manifest(tmp_path / "m.csv", kept_names), str(out), run, prune=True)
    assert run.processed == [] and (pruned["pruned_videos"], pruned["not_in_manifest"]) == (3, 0)
    assert pruned["pruned_shards"] == sorted([whole[0], partial[0]])
    assert video_ids(out) == sorted(ids(kept_names))
    after = committed_files(out)
    assert not any(f"shard={whole[0]:06d}" in k or k.endswith(f"{whole[0]:06d}.json") for k in after)
    untouched_files = {k: v for k, v in before.items() if f"shard={untouched[0]:06d}" in k}
    assert {k: after[k] for k in untouched_files} == untouched_files, (
        "prune touched a shard it had no reason to"
    )
    status = dataset_status(str(out), verify=True)
    assert (status["committed"], status["pending"], status["not_in_manifest"], status["corrupt_files"]) == (
        2,
        0,
        0,
        [],
    )
    # The rewritten shard holds exactly the surviving video's rows, unchanged.
    survivor = ids([n for n in kept_names if ids([n])[0] in partial[1]])[0]
    rows = [r for r in hive_rows(out, "faces") if r["video_id"] == survivor]
    assert rows and all(r["shard"] == partial[0] for r in rows)


def test_a_relocated_corpus_reprocesses_nothing(tmp_path) -> None:
    out = tmp_path / "out"
    stub_build(write_manifest(tmp_path / "old-mount" / "m.csv", NAMES), str(out), StubProcessor())
    before = committed_files(out)
    moved = StubProcessor()
    result = stub_build(write_manifest(tmp_path / "new-mount" / "copy" / "m.csv", NAMES), str(out), moved)
    assert moved.processed == [] and (
        result["videos_skipped"],
        result["pending"],
        result["not_in_manifest"],
    ) == (6, 0, 0)
    assert data_files(out) == data_files_of(before)
    assert {k: committed_files(out)[k] for k in before} == before  # the log only grows
    assert video_ids(out) == ids(NAMES)


def test_an_unrelated_manifest_adds_its_videos_and_deletes_nothing(tmp_path) -> None:
    out = tmp_path / "out"
    stub_build(write_manifest(tmp_path / "a" / "m.csv", NAMES), str(out), StubProcessor())
    before = committed_files(out)
    other = [f"b{i}" for i in range(5)]
    run = StubProcessor()
    result = stub_build(
        write_manifest(tmp_path / "b" / "m.csv", other, prefix="ffpp"), str(out), run, shard_size=4
    )
    assert sorted(run.processed) == ids(other, "ffpp")
    assert (result["not_in_manifest"], result["videos_skipped"], result["shards"]) == (6, 0, 5)
    after = committed_files(out)
    assert {k: after[k] for k in before} == before
    assert video_ids(out) == sorted(ids(NAMES) + ids(other, "ffpp"))


def test_shards_that_never_committed_are_retried_with_the_same_videos(tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path / "m.csv", NAMES)
    calls = {"n": 0}
    real_commit = Output.commit_shard

    def second_commit_fails(self, plan, tables, stats=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("worker lost")
        return real_commit(self, plan, tables, stats)

    monkeypatch.setattr(Output, "commit_shard", second_commit_fails)
    with pytest.raises(RuntimeError):
        stub_build(manifest, str(out), StubProcessor())
    monkeypatch.undo()
    plan = plan_doc(out)
    planned = pl.read_parquet(out / plan["videos_file"])
    failed_shard = plan["shards"][1][0]
    failed_ids = sorted(planned.filter(pl.col("shard") == failed_shard)["video_id"].to_list())

    # The next build lists the videos in another order, with one more and another shard size.
    rerun = StubProcessor()
    result = stub_build(
        write_manifest(tmp_path / "m.csv", ["x-new", *reversed(NAMES)]), str(out), rerun, shard_size=5
    )
    assert failed_shard in result["ran"]
    redone = next(s for s in result["stats"] if s["shard"] == failed_shard)
    assert redone["videos"] == len(failed_ids)
    again = pl.read_parquet(out / plan_doc(out)["videos_file"])
    assert sorted(again.filter(pl.col("shard") == failed_shard)["video_id"].to_list()) == failed_ids
    assert sorted(rerun.processed) == sorted([*failed_ids, *ids(NAMES[4:]), *ids(["x-new"])])
    assert video_ids(out) == sorted(ids([*NAMES, "x-new"]))


def test_retry_failed_redoes_error_videos_in_place(tmp_path) -> None:
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path / "m.csv", NAMES)
    bad = ids(NAMES)[3]
    stub_build(manifest, str(out), StubProcessor(errors={bad: "decode failed"}))
    assert [v["video_id"] for v in dataset_status(str(out))["failed_videos"]] == [bad]
    fixed = StubProcessor()
    result = stub_build(manifest, str(out), fixed, retry_failed=True)
    assert fixed.processed == [bad] and len(result["ran"]) == 1
    assert dataset_status(str(out))["failed_videos"] == [] and video_ids(out) == ids(NAMES)


def test_dry_run_writes_nothing_and_predicts_the_build(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(planning, "dataset_weights", lambda cfg: WEIGHTS)
    out = tmp_path / "out"
    stub_build(write_manifest(tmp_path / "m.csv", NAMES), str(out), StubProcessor())
    manifest = write_manifest(tmp_path / "m.csv", ["new1", *NAMES[2:], "new2", "new3"])
    before = everything(out)
    predicted = planning.dry_run(manifest, str(out), BuildConfig(shard_size=2))
    assert everything(out) == before
    assert predicted["fingerprint"] == dataset_status(str(out))["fingerprint"]
    result = stub_build(manifest, str(out), StubProcessor())
    keys = ("videos", "shards", "pending", "videos_to_process", "videos_skipped", "not_in_manifest")
    assert (
        {k: predicted[k] for k in keys}
        == {k: result[k] for k in keys}
        == {
            "videos": 7,
            "shards": 5,
            "pending": 2,
            "videos_to_process": 3,
            "videos_skipped": 4,
            "not_in_manifest": 2,
        }
    )
    fresh = planning.dry_run(manifest, str(tmp_path / "absent"), BuildConfig(shard_size=3))
    assert (fresh["shards"], fresh["pending"], fresh["videos_to_process"]) == (3, 3, 7)
    assert not (tmp_path / "absent").exists()
    before = everything(out)
    with pytest.raises(FingerprintMismatch):
        planning.dry_run(manifest, str(out), BuildConfig(shard_size=2, detect={"min_face_size": 40}))
    rebuilt = planning.dry_run(manifest, str(out), BuildConfig(detect={"min_face_size": 40}), rebuild=True)
    assert (rebuilt["videos_to_process"], rebuilt["not_in_manifest"]) == (7, 0) and everything(out) == before


def test_new_shards_depend_on_the_set_of_new_videos_not_on_row_order() -> None:
    names = pl.Series([f"v{i:03d}" for i in range(10)])
    one = plan_build(names, PriorPlan(next_shard=7), 3)
    two = plan_build(names.shuffle(seed=1), PriorPlan(next_shard=7), 3)
    assert one.shards.equals(two.shards) and one.todo == [7, 8, 9, 10]
    assert one.fingerprints("fp") == two.fingerprints("fp")


def test_an_output_from_before_recorded_plans_is_adopted_not_reprocessed(tmp_path) -> None:
    out = tmp_path / "out"
    stub_build(write_manifest(tmp_path / "m.csv", NAMES), str(out), StubProcessor())
    # A plan whose video ids are lost: `faceshard repair` sets the plan aside (issue 19), and the
    # next build adopts the committed shards from their own files.
    (out / plan_doc(out)["videos_file"]).unlink()
    assert any("set the plan aside" in a for a in repair_output(str(out))["actions"])
    before = committed_files(out)
    run = StubProcessor()
    stub_build(write_manifest(tmp_path / "m.csv", [*NAMES, "late"]), str(out), run)
    assert run.processed == ids(["late"]) and {k: committed_files(out)[k] for k in before} == before


def test_kill_9_during_an_incremental_build_resumes_to_the_clean_build(tmp_path) -> None:
    """A real SIGKILL of a build process (planning, staging, publishing: wherever it lands), three
    times, then a resume: the rows equal an uninterrupted build's, and earlier commits are kept."""
    grown = [*NAMES, *(f"k{i}" for i in range(8))]
    reference, out = tmp_path / "reference", tmp_path / "out"
    manifest = write_manifest(tmp_path / "m.csv", NAMES)
    for target in (reference, out):
        stub_build(manifest, str(target), StubProcessor())
    write_manifest(tmp_path / "m.csv", grown)
    stub_build(manifest, str(reference), StubProcessor())
    first_commits = committed_files(out)

    script = Path(__file__).with_name("stub_build.py")
    env = {**os.environ, "PYTHONPATH": str(script.parent)}
    rng = random.Random(13)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, str(script), manifest, str(out), "2", "0.4"], env=env)
        deadline = time.monotonic() + 120
        while not (out / "_faceshard" / "staging").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the build never started committing"
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.8))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        kills += 1
        now = committed_files(out)
        assert {k: now[k] for k in first_commits} == first_commits, "a kill touched an earlier commit"
        assert set(video_ids(out)) <= set(ids(grown))
    assert kills >= 1

    resumed = StubProcessor()
    stub_build(manifest, str(out), resumed)
    assert not set(resumed.processed) & set(ids(NAMES)), "a video committed before was processed again"
    assert dataset_status(str(out))["pending"] == 0
    for table in TABLES:
        assert hive_rows(out, table) == hive_rows(reference, table), table


def test_cli_dry_run_prints_the_plan_as_json_and_starts_nothing(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from faceshard.app import cli
    from faceshard.flows import local as local_build

    out = tmp_path / "out"
    stub_build(write_manifest(tmp_path / "m.csv", NAMES), str(out), StubProcessor(), preset="demo")
    manifest = write_manifest(tmp_path / "m.csv", [*NAMES[1:], "new"])
    before = everything(out)
    monkeypatch.setattr(planning, "dataset_weights", lambda cfg: WEIGHTS)
    monkeypatch.setattr(local_build, "run_build", lambda *a, **k: pytest.fail("dry-run ran a build"))
    args = ["build", manifest, "--out", str(out), "--shard-size", "2", "--dry-run", "--json"]
    done = CliRunner().invoke(cli.app, args)
    assert done.exit_code == 0, done.output
    plan = json.loads(done.stdout)
    assert {k: plan[k] for k in ("videos", "shards", "pending", "videos_to_process", "not_in_manifest")} == {
        "videos": 6,
        "shards": 4,
        "pending": 1,
        "videos_to_process": 1,
        "not_in_manifest": 1,
    }
    assert plan["fingerprint"] == dataset_status(str(out))["fingerprint"]
    assert everything(out) == before


def test_a_prune_killed_before_recommitting_never_shows_a_video_twice(tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    stub_build(write_manifest(tmp_path / "m.csv", NAMES), str(out), StubProcessor())
    kept = [n for n in NAMES if n not in ("n00", "n01", "n02")]  # shard 0 goes whole, shard 1 in part
    manifest = write_manifest(tmp_path / "m.csv", kept)

    def killed(self, shard_id, keep):
        raise RuntimeError("killed before recommitting")

    monkeypatch.setattr(Output, "_recommit_without_others", killed)
    with pytest.raises(RuntimeError):
        stub_build(manifest, str(out), StubProcessor(), prune=True)
    monkeypatch.undo()
    listed = [r["video_id"] for r in hive_rows(out, "videos")]
    assert len(listed) == len(set(listed)) and not set(listed) & set(ids(NAMES[:2]))
    resumed = StubProcessor()
    stub_build(manifest, str(out), resumed)
    assert resumed.processed == ids(["n03"])  # the half-pruned shard is pending with what it keeps
    assert video_ids(out) == ids(kept) and dataset_status(str(out))["pending"] == 0


def test_a_bad_manifest_fails_before_models_or_a_server_start(tmp_path, monkeypatch) -> None:
    from faceshard.errors import ManifestError
    from faceshard.flows import local as build_flow

    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,video_id\na/video.mp4,0,same\nb/video.mp4,1,same\n")
    monkeypatch.setattr(
        build_flow, "local_runtime", lambda *a, **k: pytest.fail("a Prefect server was started")
    )
    monkeypatch.setattr(planning, "dataset_weights", lambda cfg: pytest.fail("models were loaded first"))
    with pytest.raises(ManifestError, match="duplicate video ids"):
        build_flow.run_build(str(manifest), str(tmp_path / "out"), BuildConfig())
    assert not (tmp_path / "out").exists()
