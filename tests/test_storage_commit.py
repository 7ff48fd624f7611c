"""The shard commit protocol on local disk, file:// and memory://: visibility, crashes, resume, retry."""

from __future__ import annotations

import os
import pickle
import re
import uuid
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from faceshard.errors import FingerprintMismatch, StorageError
from faceshard.storage import commit as commit_module
from faceshard.storage import fsio
from faceshard.storage.commit import Output
from faceshard.storage.manifest import ShardPlan, plan_shards
from faceshard.storage.reader import load_faces, read_table
from faceshard.storage.schema import SCHEMA_VERSION, rows_to_tables, table_schemas
from faceshard.storage.status import dataset_status
from faceshard.storage.testing import fake_shard_tables, fake_videos

CONFIG = {"detect": {"thresholds": [0.85, 0.95, 0.95], "keep": "all"}, "embed": {"dtype": "float16"}}
WEIGHTS = {"repvit": {"source": "hub:repvit", "fingerprint": "aaa", "random": False}}


def _open(uri: str, config: dict | None = None, **kwargs) -> Output:
    return Output.open(uri, config=config or CONFIG, weights=kwargs.pop("weights", WEIGHTS), **kwargs)


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def _data_files(root: Path) -> list[Path]:
    return sorted(p for table in ("videos", "faces", "identities") for p in (root / table).rglob("*.parquet"))


def _build(uri: str, n_videos: int = 12, shard_size: int = 4, errors: dict[str, str] | None = None):
    plans = plan_shards(fake_videos(n_videos, splits=("train", "val")), shard_size)
    out = _open(uri)
    out.set_plan(plans)
    for plan in plans:
        out.commit_shard(plan, fake_shard_tables(plan, errors=errors), {"stage_seconds": {"detect": 1.0}})
    return out, plans


@pytest.fixture(params=["path", "file", "memory"])
def uri(request, tmp_path) -> str:
    if request.param == "memory":
        return f"memory://faceshard-{uuid.uuid4().hex}/out"
    if request.param == "file":
        return f"file://{tmp_path}/out"
    return str(tmp_path / "out")


def test_committed_shards_are_visible_to_reader_status_and_hive(uri) -> None:
    out, _ = _build(uri, errors={"v00005": "decode failed: truncated stream"})
    faces = load_faces(uri)
    assert len(faces) == 11 * 3 and faces.emb_rgb.shape == (33, 8) and faces.emb_rgb.dtype == np.float16
    labels = dict(zip(faces.video_id.tolist(), faces.label.tolist(), strict=True))
    assert labels["v00000"] == 0 and labels["v00003"] == 1 and "v00005" not in labels
    train = load_faces(uri, split="train", columns=("emb_rgb", "score"), emb_dtype="float32")
    assert set(train.video_id.tolist()) == {f"v{i:05d}" for i in range(0, 12, 2)}
    assert train.emb_rgb.dtype == np.float32 and train.extra["score"].shape == (18,)

    videos = read_table(uri, "videos")
    assert sorted(videos["video_id"].to_pylist()) == [f"v{i:05d}" for i in range(12)]
    assert videos["shard"].to_pylist() == [0] * 4 + [1] * 4 + [2] * 4
    assert read_table(uri, "identities", split="val").num_rows == 5

    status = dataset_status(uri)
    assert (status["shards_total"], status["committed"], status["failed"], status["pending"]) == (3, 3, 0, 0)
    assert status["fingerprint"] == out.fingerprint
    assert status["totals"]["videos"] == 12 and status["totals"]["faces"] == 33
    assert status["totals"]["identities"] == 11 and status["totals"]["bytes"] > 0
    assert status["video_status"] == {"error": 1, "ok": 11}
    assert status["failed_videos"] == [
        {
            "video_id": "v00005",
            "path": "/data/v00005.mp4",
            "error": "decode failed: truncated stream",
            "shard": 1,
        }
    ]
    assert status["stage_seconds"] == {"detect": 3.0}
    assert status["ok"] is False

    fs, root = fsio.open_fs(uri)
    dataset = ds.dataset(
        fsio.join(root, "videos"),
        format="parquet",
        partitioning="hive",
        filesystem=None if "memory" not in uri else fs,
    )
    table = dataset.to_table()
    assert table.num_rows == 12
    assert {"video_id", "label", "status", "error", "split", "shard", "n_faces"} <= set(table.column_names)


def test_plain_hive_dataset_reads_local_output_by_path(tmp_path) -> None:
    _build(str(tmp_path / "out"))
    for table, rows in (("videos", 12), ("faces", 36), ("identities", 12)):
        read = ds.dataset(f"{tmp_path}/out/{table}", format="parquet", partitioning="hive").to_table()
        assert read.num_rows == rows
        assert read.schema.names[-2:] == ["split", "shard"]


def test_same_fingerprint_resumes_and_skips_committed(uri) -> None:
    out, plans = _build(uri)
    again = _open(uri)
    assert again.fingerprint == out.fingerprint
    assert all(again.is_committed(plan) for plan in plans)
    more = plan_shards(fake_videos(14, splits=("train", "val")), 4)
    assert [p.shard_id for p in again.pending(more)] == [3]
    again.set_plan(more)
    assert dataset_status(uri)["pending"] == 1


def test_changed_config_is_refused_with_the_changed_key(uri) -> None:
    _build(uri)
    changed = {**CONFIG, "detect": {"thresholds": [0.6, 0.7, 0.7], "keep": "all"}}
    with pytest.raises(FingerprintMismatch) as info:
        _open(uri, changed)
    message = str(info.value)
    assert "detect.thresholds: [0.85,0.95,0.95] → [0.6,0.7,0.7]" in message
    assert "keep" not in message
    assert "--rebuild" in message and "new output path" in message
    with pytest.raises(FingerprintMismatch, match=r"weights\.repvit\.fingerprint: \"aaa\" → \"bbb\""):
        _open(uri, weights={"repvit": {"source": "hub:repvit", "fingerprint": "bbb"}})
    # Where the weights come from does not change the rows.
    _open(uri, weights={"repvit": {"source": "/local/copy", "fingerprint": "aaa"}})


def test_rebuild_removes_every_old_row(uri) -> None:
    _, old_plans = _build(uri, n_videos=12)
    changed = {**CONFIG, "embed": {"dtype": "float32"}}
    out = _open(uri, changed, rebuild=True)
    assert dataset_status(uri)["committed"] == 0
    assert len(load_faces(uri)) == 0
    assert not any(out.is_committed(plan) for plan in old_plans)
    plans = plan_shards(fake_videos(4, prefix="new"), 4)
    out.set_plan(plans)
    out.commit_shard(plans[0], fake_shard_tables(plans[0], emb_dtype="float32"), {})
    faces = load_faces(uri)
    assert set(faces.video_id.tolist()) == {f"new{i:05d}" for i in range(4)}
    assert faces.emb_rgb.dtype == np.float32
    fs, root = fsio.open_fs(uri)
    assert all("new" in p or "shard=000000" in p for p in fsio.list_files(fs, fsio.join(root, "faces")))
    assert len(fsio.list_files(fs, fsio.join(root, "faces"))) == 1


def test_leftovers_of_dead_writers_are_cleaned_on_open_and_nothing_else(tmp_path) -> None:
    root = tmp_path / "out"
    _build(str(root))  # lease epoch 1
    committed = {p: p.stat().st_mtime_ns for p in _data_files(root)}
    staging = root / "_faceshard" / "staging"
    dead_tmp = staging / "tmp-e000001" / "deadbeef.tmp"
    dead_tmp.parent.mkdir(parents=True, exist_ok=True)
    dead_tmp.write_bytes(b"half a parquet file")
    shard7 = root / "faces" / "split=train" / "shard=000007"
    shard7.mkdir(parents=True)
    orphan = shard7 / "part-20260101T000000-e000001-0123456789ab.parquet"  # an older epoch: provably dead
    orphan.write_bytes(b"published but never committed")
    # Names without faceshard's exact attempt id are never deleted, however old (issue 19: a
    # user's part-0.parquet was deleted by the time-based grace rule this replaced).
    unknown_young = shard7 / "part-20260101T000000-fff.parquet"
    unknown_young.write_bytes(b"an older faceshard may still be publishing this")
    unknown_old = shard7 / "part-20250101T000000-eee.parquet"
    unknown_old.write_bytes(b"left a day ago")
    os.utime(unknown_old, (1.0, 1.0))
    users = shard7 / "part-0.parquet"
    users.write_bytes(b"a user's own file")
    os.utime(users, (1.0, 1.0))
    foreign = root / "faces" / "README.txt"
    foreign.write_text("not ours")
    assert len(load_faces(str(root))) == 36  # orphans are invisible to the reader even before cleanup

    _open(str(root))  # epoch 2
    assert not orphan.exists() and not _files(staging)
    assert unknown_young.exists() and unknown_old.exists() and users.exists() and foreign.exists()
    assert {p: p.stat().st_mtime_ns for p in _data_files(root) if p.parent != shard7} == committed


class Crash(RuntimeError):
    pass


def _hive_rows(uri: str, table: str) -> list[dict]:
    fs, root = fsio.open_fs(uri)
    path = fsio.join(root, table)
    if not fs.exists(path):
        return []
    dataset = ds.dataset(path, format="parquet", partitioning="hive", filesystem=fs)
    if not dataset.files:
        return []
    return dataset.to_table(columns=["video_id", "shard"]).to_pylist()


def test_crash_before_the_marker_leaves_nothing_visible(uri, monkeypatch) -> None:
    plans = plan_shards(fake_videos(8), 4)
    out = _open(uri)
    out.set_plan(plans)
    out.commit_shard(plans[0], fake_shard_tables(plans[0]), {})

    append = Output._append

    def die(self, kind, payload):
        if kind == "commit":
            raise Crash("killed before the commit entry")
        return append(self, kind, payload)

    monkeypatch.setattr(Output, "_append", die)
    with pytest.raises(Crash):
        out.commit_shard(plans[1], fake_shard_tables(plans[1]), {})
    monkeypatch.undo()
    fs, root = fsio.open_fs(uri)
    assert any("shard=000001" in p for p in fsio.list_files(fs, fsio.join(root, "_faceshard", "staging")))
    assert {r["shard"] for r in _hive_rows(uri, "faces")} == {0}  # even a plain listing sees only shard 0
    assert set(load_faces(uri).video_id.tolist()) == {f"v{i:05d}" for i in range(4)}
    status = dataset_status(uri)
    assert (status["committed"], status["pending"]) == (1, 1)

    reopened = _open(uri)
    assert fsio.list_files(fs, fsio.join(root, "_faceshard", "staging")) == []
    assert not reopened.is_committed(plans[1]) and reopened.is_committed(plans[0])
    reopened.commit_shard(plans[1], fake_shard_tables(plans[1]), {})
    assert len(load_faces(uri)) == 24 and len(_hive_rows(uri, "faces")) == 24


def test_crash_after_the_marker_is_rolled_forward(uri, monkeypatch) -> None:
    plans = plan_shards(fake_videos(8, splits=("train", "val")), 4)
    out = _open(uri)
    out.set_plan(plans)
    out.commit_shard(plans[0], fake_shard_tables(plans[0]), {})
    real_move = Output._move_into_place
    moves = []

    def move_then_die(self, staged, final):
        if len(moves) == 2:
            raise Crash("killed while moving files into place")
        moves.append(final)
        real_move(self, staged, final)

    monkeypatch.setattr(Output, "_move_into_place", move_then_die)
    with pytest.raises(Crash):
        out.commit_shard(plans[1], fake_shard_tables(plans[1]), {})
    monkeypatch.undo()
    # Committed: readers following the markers see the whole shard, from staging where needed.
    assert len(load_faces(uri)) == 24
    assert sorted(read_table(uri, "videos")["video_id"].to_pylist()) == [f"v{i:05d}" for i in range(8)]
    assert dataset_status(uri, verify=True)["corrupt_files"] == []
    assert out.is_committed(plans[1]) and out.marker(1)["published"] is False
    # The two moved files of shard 1 are its identities files: `videos` (moved last) and faces do
    # not show the shard yet, so no videos row is visible without its faces.
    assert {r["shard"] for r in _hive_rows(uri, "faces")} == {0}
    assert {r["shard"] for r in _hive_rows(uri, "videos")} == {0}
    assert {r["shard"] for r in _hive_rows(uri, "identities")} == {0, 1}

    _open(uri)
    assert out.marker(1)["published"] is True
    assert len(_hive_rows(uri, "faces")) == 24 and len(_hive_rows(uri, "videos")) == 8
    fs, root = fsio.open_fs(uri)
    assert fsio.list_files(fs, fsio.join(root, "_faceshard", "staging")) == []


def test_crash_in_the_middle_of_publishing(tmp_path, monkeypatch) -> None:
    uri = str(tmp_path / "out")
    plans = plan_shards(fake_videos(4), 4)
    out = _open(uri)
    out.set_plan(plans)
    real_put = fsio.put_bytes
    calls = {"n": 0}

    def put_then_die(fs, path, data, staging_dir):
        calls["n"] += 1
        if calls["n"] == 2:
            # A half-written staging file, as a SIGKILL during the write would leave.
            os.makedirs(staging_dir, exist_ok=True)
            Path(staging_dir, "partial.tmp").write_bytes(data[: len(data) // 2])
            raise Crash("killed while writing")
        real_put(fs, path, data, staging_dir)

    monkeypatch.setattr(fsio, "put_bytes", put_then_die)
    with pytest.raises(Crash):
        out.commit_shard(plans[0], fake_shard_tables(plans[0]), {})
    monkeypatch.undo()
    assert len(load_faces(uri)) == 0 and dataset_status(uri)["committed"] == 0
    _open(uri)
    assert _data_files(tmp_path / "out") == []
    assert not _files(tmp_path / "out" / "_faceshard" / "staging")


def test_retry_failed_replaces_rows_atomically_and_leaves_other_shards_alone(tmp_path) -> None:
    uri = str(tmp_path / "out")
    out, plans = _build(uri, errors={"v00001": "decode failed", "v00006": "oom"})
    root = tmp_path / "out"
    others = {
        p: (p.stat().st_mtime_ns, p.read_bytes()) for p in _data_files(root) if "shard=000000" not in str(p)
    }
    before = {p for p in _data_files(root) if "shard=000000" in str(p)}
    assert out.shards_with_errors() == [0, 1]
    assert out.failed_video_ids(0) == ["v00001"]
    old_rows = out.committed_rows(0, "faces")

    plan = plans[0]
    retry = ShardPlan(plan.shard_id, [v for v in plan.videos if v.video_id == "v00001"])
    fixed = fake_shard_tables(retry, faces_per_video=2, seed=99)
    marker = out.replace_videos(plan, fixed, {"stage_seconds": {"detect": 0.2}})

    assert marker["status_counts"] == {"ok": 4}
    assert marker["history"][0]["stats"] == {"stage_seconds": {"detect": 1.0}}
    videos = out.committed_rows(0, "videos")
    assert videos["video_id"].to_pylist() == ["v00000", "v00002", "v00001", "v00003"]  # split-major order
    assert videos.filter(pc.equal(videos["video_id"], "v00001"))["status"].to_pylist() == ["ok"]
    faces = out.committed_rows(0, "faces")
    assert faces.num_rows == old_rows.num_rows + 2
    kept = faces.filter(pc.not_equal(faces["video_id"], "v00001"))
    assert kept.to_pylist() == old_rows.filter(pc.not_equal(old_rows["video_id"], "v00001")).to_pylist()

    assert not any(p.exists() for p in before)  # superseded files removed
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in others} == others
    status = dataset_status(uri)
    assert status["video_status"] == {"error": 1, "ok": 11}
    assert [v["video_id"] for v in status["failed_videos"]] == ["v00006"]
    assert out.is_committed(plan)


def test_crash_during_a_replacement_never_shows_a_video_twice(uri, monkeypatch) -> None:
    out, plans = _build(uri, n_videos=4, errors={"v00001": "decode failed"})
    retry = ShardPlan(0, [plans[0].videos[1]])

    def die(self, staged, final):
        raise Crash("killed after the new marker, before moving its files")

    monkeypatch.setattr(Output, "_move_into_place", die)
    with pytest.raises(Crash):
        out.replace_videos(plans[0], fake_shard_tables(retry), {})
    monkeypatch.undo()
    assert read_table(uri, "videos")["status"].to_pylist() == ["ok"] * 4  # the new rows, from staging
    # The old videos files go first, the new ones come last: the shard is briefly absent, never mixed.
    assert _hive_rows(uri, "videos") == []
    _open(uri)
    rows = _hive_rows(uri, "videos")
    assert sorted(r["video_id"] for r in rows) == [f"v{i:05d}" for i in range(4)]
    assert dataset_status(uri)["video_status"] == {"ok": 4}


def test_failure_record_counts_until_the_shard_commits(uri) -> None:
    plans = plan_shards(fake_videos(8), 4)
    out = _open(uri)
    out.set_plan(plans)
    out.commit_shard(plans[0], fake_shard_tables(plans[0]), {})
    out.record_failure(plans[1], "RuntimeError: CUDA out of memory")
    status = dataset_status(uri)
    assert (status["committed"], status["failed"], status["pending"]) == (1, 1, 0)
    assert status["failed_shards"][0]["error"] == "RuntimeError: CUDA out of memory"
    assert status["ok"] is False
    assert list(out.failures()) == [1]
    out.commit_shard(plans[1], fake_shard_tables(plans[1]), {})
    status = dataset_status(uri)
    assert (status["committed"], status["failed"], status["ok"]) == (2, 0, True)


def test_commit_checks_rows_against_the_plan(uri) -> None:
    plans = plan_shards(fake_videos(4), 4)
    out = _open(uri)
    tables = fake_shard_tables(ShardPlan(0, plans[0].videos[:3]))
    with pytest.raises(ValueError, match="one row per planned video"):
        out.commit_shard(plans[0], tables, {})
    assert not out.is_committed(plans[0])


def test_commit_refuses_after_a_rebuild_elsewhere(uri) -> None:
    plans = plan_shards(fake_videos(4), 4)
    worker_copy = pickle.loads(pickle.dumps(_open(uri)))
    _open(uri, {"other": True}, rebuild=True)
    with pytest.raises(StorageError, match="taken over"):
        worker_copy.commit_shard(plans[0], fake_shard_tables(plans[0]), {})


def test_output_is_small_and_picklable(uri) -> None:
    out, plans = _build(uri, n_videos=4)
    blob = pickle.dumps(out)
    assert len(blob) < 1000
    copy = pickle.loads(blob)
    assert copy.fingerprint == out.fingerprint and copy.is_committed(plans[0])


def test_metadata_records_config_weights_plan_and_random_models(uri) -> None:
    weights = {**WEIGHTS, "depth": {"source": "random-init", "fingerprint": "rnd", "random": True}}
    out = _open(uri, weights=weights)
    out.set_plan(plan_shards(fake_videos(9), 4))
    meta = out.metadata()
    assert meta["schema_version"] == SCHEMA_VERSION and meta["fingerprint"] == out.fingerprint
    assert meta["row_affecting"] == CONFIG and meta["weights"]["depth"]["random"] is True
    assert meta["random_weights"] == ["depth"]
    plan = out.state().plan  # the plan summary lives in the plan's log entry (issue 19), not the metadata
    assert (plan["shards_total"], plan["videos_total"]) == (3, 9)
    assert meta["created_at"] and meta["faceshard_version"]
    assert dataset_status(uri)["random_weights"] == ["depth"]


def test_refuses_a_foreign_non_empty_directory(tmp_path) -> None:
    (tmp_path / "thesis.tex").write_text("do not delete")
    with pytest.raises(StorageError, match="not empty and not a faceshard output"):
        _open(str(tmp_path), rebuild=True)
    assert (tmp_path / "thesis.tex").exists()
    clips = tmp_path / "corpus"
    (clips / "videos").mkdir(parents=True)
    (clips / "videos" / "clip_000.mp4").write_bytes(b"a user's video")
    with pytest.raises(StorageError, match=r"videos/clip_000\.mp4"):  # deep check, not top-level names
        _open(str(clips), rebuild=True)
    assert (clips / "videos" / "clip_000.mp4").exists()


def test_shard_with_only_failed_videos_commits_empty_faces(uri) -> None:
    plans = plan_shards(fake_videos(2), 2)
    out = _open(uri)
    out.set_plan(plans)
    errors = {"v00000": "no such file", "v00001": "path outside allowed roots: /etc/passwd"}
    out.commit_shard(plans[0], fake_shard_tables(plans[0], errors=errors), {})
    assert len(load_faces(uri)) == 0
    status = dataset_status(uri)
    assert status["committed"] == 1 and status["failed_by_reason"] == {
        "no such file": 1,
        "path outside allowed roots: /etc/passwd": 1,
    }


def test_tables_from_rows_commit_without_partition_columns(uri) -> None:
    plans = plan_shards(fake_videos(1), 1)
    schemas = table_schemas()
    tables = rows_to_tables(
        [
            {
                "video_id": "v00000",
                "path": "/data/v00000.mp4",
                "label": 0,
                "split": "train",
                "status": "no_faces",
            }
        ],
        [],
        [],
        schemas,
    )
    out = _open(uri)
    out.commit_shard(plans[0], {k: t.drop_columns(["split", "shard"]) for k, t in tables.items()}, {})
    assert read_table(uri, "videos").select(["video_id", "status", "split", "shard"]).to_pylist() == [
        {"video_id": "v00000", "status": "no_faces", "split": "train", "shard": 0}
    ]


def test_split_names_are_encoded_in_paths(tmp_path) -> None:
    uri = str(tmp_path / "out")
    videos = fake_videos(2, splits=("test/hard", "train"))
    plans = plan_shards(videos, 2)
    out = _open(uri)
    out.commit_shard(plans[0], fake_shard_tables(plans[0]), {})
    assert (tmp_path / "out" / "videos" / "split=test%2Fhard").is_dir()
    table = ds.dataset(f"{uri}/videos", format="parquet", partitioning="hive").to_table()
    assert sorted(table["split"].to_pylist()) == ["test/hard", "train"]
    assert len(load_faces(uri, split="test/hard")) == 3


def test_marker_holds_checksums_and_stats(tmp_path) -> None:
    import hashlib

    uri = str(tmp_path / "out")
    out, _ = _build(uri, n_videos=4)
    marker = out.marker(0)
    assert marker["rows"] == {"videos": 4, "faces": 12, "identities": 4}
    for entries in marker["files"].values():
        for entry in entries:
            data = (tmp_path / "out" / entry["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
            assert entry["path"].endswith(f"part-{marker['attempt']}.parquet")
    assert marker["stats"] == {"stage_seconds": {"detect": 1.0}} and marker["status_counts"] == {"ok": 4}
    assert dataset_status(uri, verify=True)["corrupt_files"] == []
    victim = tmp_path / "out" / marker["files"]["faces"][0]["path"]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    verified = dataset_status(uri, verify=True)
    problem = verified["corrupt_files"][0]["problem"]  # footer + row count + size (issue 19)
    assert (
        problem.startswith("unreadable footer")
        and verified["ok"] is False
        and verified["unvouched_shards"] == [0]
    )


def test_fingerprint_helpers_are_order_independent() -> None:
    a = commit_module.dataset_fingerprint({"a": 1, "b": {"c": 2, "d": 3}}, WEIGHTS)
    b = commit_module.dataset_fingerprint({"b": {"d": 3, "c": 2}, "a": 1}, WEIGHTS)
    assert a == b != commit_module.dataset_fingerprint({"a": 1, "b": {"c": 2, "d": 4}}, WEIGHTS)
    assert a != commit_module.dataset_fingerprint(
        {"a": 1, "b": {"c": 2, "d": 3}}, WEIGHTS, schema_version=SCHEMA_VERSION + 1
    )
    plans = plan_shards(fake_videos(8), 4)
    assert commit_module.shard_fingerprint(a, plans[0]) != commit_module.shard_fingerprint(a, plans[1])


def test_reader_retries_when_a_build_replaces_files_under_it(tmp_path, monkeypatch) -> None:
    from faceshard.storage import reader

    uri = str(tmp_path / "out")
    out, plans = _build(uri, n_videos=4, errors={"v00001": "decode failed"})
    stale = reader.read_state(*fsio.open_fs(uri))
    out.replace_videos(plans[0], fake_shard_tables(ShardPlan(0, [plans[0].videos[1]])), {})
    calls = []

    def first_stale(fs, root):
        calls.append(root)
        return stale if len(calls) == 1 else commit_module.read_state(fs, root)

    monkeypatch.setattr(reader, "read_state", first_stale)
    assert read_table(uri, "videos")["status"].to_pylist() == ["ok"] * 4
    assert len(calls) == 2


def test_build_config_fingerprint_and_readable_mismatch(tmp_path) -> None:
    from faceshard.config import BuildConfig

    uri = str(tmp_path / "out")
    cfg = BuildConfig()
    out = Output.open(uri, config=cfg, weights=WEIGHTS)
    assert out.metadata()["config"]["runtime"]["device"] == cfg.runtime.device  # full config recorded
    assert out.metadata()["row_affecting"] == cfg.row_affecting()
    assert Output.open(uri, config=cfg.row_affecting(), weights=WEIGHTS).fingerprint == out.fingerprint
    changed = cfg.model_copy(deep=True)
    changed.detect.thresholds = (0.6, 0.7, 0.7)
    changed.runtime.num_cpus = 8  # runtime never changes rows
    with pytest.raises(FingerprintMismatch) as info:
        Output.open(uri, config=changed.row_affecting(), weights=WEIGHTS)
    assert "detect.thresholds: [0.85,0.95,0.95] → [0.6,0.7,0.7]" in str(info.value)
    assert "runtime" not in str(info.value)


def test_load_faces_reads_an_output_without_pooled_embeddings(tmp_path: Path) -> None:
    """README's `load_faces(URI, split="train")` on a build that stored no `emb_rgb` (a MINTIME build
    stores tokens): the default loads whichever embeddings exist, instead of a KeyError; asking for a
    column the build lacks names the settings that add it."""
    from faceshard.storage.reader import MissingColumnsError

    uri = str(tmp_path / "out")
    out = Output.open(uri, config={}, weights={})
    plans = plan_shards(fake_videos(4, splits=("train", "val")), 2)
    out.set_plan(plans)
    for plan in plans:
        out.commit_shard(plan, fake_shard_tables(plan, emb_dim=None), {})
    out.close()
    faces = load_faces(uri, split="train")
    assert len(faces) == 2 * 3 and faces.emb_rgb is None and set(faces.label.tolist()) == {0}
    with pytest.raises(
        MissingColumnsError, match=re.escape("--set embed.enabled=true --set embed.output=pooled --rebuild")
    ):
        load_faces(uri, columns=("emb_rgb",))


def test_an_append_the_store_answers_exists_and_absent_to_ends_in_one_error(
    tmp_path: Path, monkeypatch
) -> None:
    """A store (or a cache before it) that refuses every log entry as existing yet returns none: the
    append gives up with a StorageError naming the entry, instead of looping (as it did on s3fs's
    stale listing cache), and nothing is committed."""
    from faceshard.storage import log as log_module

    uri = str(tmp_path / "out")
    plans = plan_shards(fake_videos(4), 2)
    out = _open(uri)
    out.set_plan(plans)
    monkeypatch.setattr(log_module.fsio, "create_if_absent", lambda fs, path, data: False)
    monkeypatch.setattr(log_module.time, "sleep", lambda seconds: None)
    with pytest.raises(StorageError, match=r"refuses to create log entry \d+ as existing"):
        out.commit_shard(plans[0], fake_shard_tables(plans[0]), {})
    monkeypatch.undo()
    assert dataset_status(uri)["committed"] == 0
