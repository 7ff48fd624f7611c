"""Every record validated (issue 19): each record type corrupted each way (truncated, a wrong type
in each field, each field missing, a path outside the output) is an error naming the file and the
field; the build refuses to start, `status` exits non-zero naming it, nothing is changed, and
`repair` restores an output that the next build finishes with every row exactly once. A user's
files of every shape survive every command."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import storage_writers as writers
from typer.testing import CliRunner

from faceshard.app.cli import app
from faceshard.errors import StorageError
from faceshard.storage import collector, fsio
from faceshard.storage.commit import Output, read_state
from faceshard.storage.reader import read_table
from faceshard.storage.repair import repair_output
from faceshard.storage.status import dataset_status

IDS = [f"v{i:05d}" for i in range(writers.N_VIDEOS)]
TABLES = ("videos", "faces", "identities")


def _wrong(value: Any) -> Any:
    """A value of another JSON type than `value`'s."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int | float):
        return "twelve"
    if isinstance(value, str):
        return 12345
    if isinstance(value, dict):
        return [1, 2]
    if isinstance(value, list):
        return {"a": 1}
    return {"a": 1}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three shards committed, the fourth recorded failed: every kind of log entry is present."""
    root = tmp_path_factory.mktemp("template") / "out"
    plans = writers.plans()
    with Output.open(str(root), config=writers.CONFIG, weights=writers.WEIGHTS) as out:
        out.set_plan(plans)
        for plan in plans[:3]:
            out.commit_shard(plan, writers.tables(plan), {})
        out.record_failure(plans[3], "decoder crashed")
    return root


def _entry(root: Path, kind: str) -> Path:
    return next(
        p
        for p in sorted((root / "_faceshard" / "log").glob("*.json"))
        if json.loads(p.read_text())["kind"] == kind
    )


def _edit(path: Path, change: Callable[[dict], None]) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _check_damage(root: Path, names: list[str], outside: dict[Path, bytes]) -> None:
    """Refused everywhere with the file and field named, nothing changed; repair; the next build
    finishes with every row exactly once; nothing outside the output touched."""
    before = _snapshot(root)
    with pytest.raises(StorageError) as refused:
        Output.open(str(root), config=writers.CONFIG, weights=writers.WEIGHTS)
    for name in names:
        assert name in str(refused.value), f"{name!r} not named in: {refused.value}"
    status = CliRunner().invoke(app, ["status", str(root), "--json"])
    assert status.exit_code != 0, status.output
    assert names[0] in "".join(status.output.split()), status.output  # rich wraps anywhere
    assert _snapshot(root) == before, "a refused command changed the output"

    report = repair_output(str(root), lease_ttl_s=0.5)
    assert report["actions"], report
    info = dataset_status(str(root))
    assert info["problems"] == [], info["problems"]
    writers.manifest_build(str(root), IDS)
    ids = read_table(str(root), "videos")["video_id"].to_pylist()
    assert sorted(ids) == IDS, "after repair and a build, every video is there exactly once"
    for name in ("faces", "identities"):
        assert set(read_table(str(root), name)["video_id"].to_pylist()) <= set(IDS)
    assert {p: p.read_bytes() for p in outside} == outside


def _case(template: Path, tmp_path: Path, label: str) -> tuple[Path, dict[Path, bytes]]:
    root = tmp_path / label / "out"
    shutil.copytree(template, root)
    victim = root.parent / "victim.txt"
    victim.write_text("a file outside the output")
    victim_dir = root.parent / "victim-dir"
    victim_dir.mkdir()
    (victim_dir / "keep.bin").write_bytes(b"keep me")
    return root, {victim: victim.read_bytes(), victim_dir / "keep.bin": b"keep me"}


ENTRY_FIELDS = {
    "commit": (
        "marker",
        [
            "shard",
            "fingerprint",
            "dataset_fingerprint",
            "attempt",
            "epoch",
            "committed_at",
            "published",
            "files",
            "rows",
            "bytes",
            "status_counts",
            "stats",
        ],
    ),
    "plan": (
        "plan",
        ["format", "dataset_fingerprint", "shards_total", "videos_total", "shards", "videos_file", "digest"],
    ),
    "metadata": (
        "metadata",
        [
            "format",
            "schema_version",
            "fingerprint",
            "created_at",
            "faceshard_version",
            "weights",
            "random_weights",
        ],
    ),
    "failure": ("failure", ["shard", "fingerprint", "dataset_fingerprint", "error", "videos", "at"]),
}


@pytest.mark.parametrize("kind", list(ENTRY_FIELDS))
@pytest.mark.parametrize("way", ["wrong type", "missing"])
def test_each_field_of_each_log_record_damaged_is_named_and_repaired(
    template: Path, tmp_path: Path, kind: str, way: str
) -> None:
    key, fields = ENTRY_FIELDS[kind]
    for index, field in enumerate([*fields, "seq", "epoch", "kind", "at"]):
        if way == "missing" and field == "videos_file":  # optional: a plan may name no file
            continue
        root, outside = _case(template, tmp_path, f"{kind}-{way}-{index}-{field}")
        path = _entry(root, kind)
        top = field in ("seq", "epoch", "kind", "at")

        def change(entry: dict, field: str = field, top: bool = top) -> None:
            record = entry if top else entry[key]
            if way == "missing":
                del record[field]
            else:
                record[field] = _wrong(record[field])

        _edit(path, change)
        _check_damage(root, [f"_faceshard/log/{path.name}", field], outside)


@pytest.mark.parametrize("kind", list(ENTRY_FIELDS))
def test_each_log_record_truncated_is_named_and_repaired(template: Path, tmp_path: Path, kind: str) -> None:
    root, outside = _case(template, tmp_path, kind)
    path = _entry(root, kind)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    _check_damage(root, [f"_faceshard/log/{path.name}", "Invalid JSON"], outside)


@pytest.mark.parametrize(
    "where",
    [
        "../victim.txt",
        "/tmp/victim.txt",
        "videos/split=train/shard=000000/part-0.parquet",
        "staging:../victim-dir",
        "plan:../victim.txt",
    ],
)
def test_a_record_naming_a_path_outside_faceshard_is_refused_and_nothing_there_is_touched(
    template: Path, tmp_path: Path, where: str
) -> None:
    root, outside = _case(template, tmp_path, "foreign")
    users = root / "videos" / "split=train" / "shard=000000" / "part-0.parquet"
    users.write_bytes(b"a user's own file")
    outside[users] = users.read_bytes()
    if where.startswith("plan:"):
        path = _entry(root, "plan")
        _edit(path, lambda e: e["plan"].__setitem__("videos_file", where[5:]))
        field = "plan.videos_file"
    elif where.startswith("staging:"):
        path = _entry(root, "commit")
        _edit(path, lambda e: e["marker"].__setitem__("staging", where[8:]))
        field = "staging"
    else:
        path = _entry(root, "commit")
        _edit(path, lambda e: e["marker"]["files"]["videos"][0].__setitem__("path", where))
        field = "not a faceshard data file name"
    _check_damage(root, [f"_faceshard/log/{path.name}", field], outside)


LEASE_FIELDS = [
    "epoch",
    "token",
    "owner",
    "host",
    "pid",
    "acquired_at",
    "heartbeat_at",
    "expires_at",
    "ttl_s",
    "heartbeat_s",
    "beat",
    "released",
]


@pytest.mark.parametrize("way", ["truncated", "wrong type", "missing"])
def test_a_damaged_lease_record_is_named_and_repair_takes_it_over(
    template: Path, tmp_path: Path, way: str
) -> None:
    for field in LEASE_FIELDS if way != "truncated" else ["(all)"]:
        root, outside = _case(template, tmp_path, f"{way}-{field}")
        path = sorted((root / "_faceshard" / "lease").glob("epoch-*.json"))[-1]
        if way == "truncated":
            path.write_bytes(path.read_bytes()[:30])
            names = [path.name]
        else:
            _edit(
                path,
                lambda r, field=field: (
                    r.pop(field) if way == "missing" else r.__setitem__(field, _wrong(r[field]))
                ),
            )
            names = [path.name, field]
        _check_damage(root, names, outside)


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_lost_plan_parquet_refuses_and_repair_replans(template: Path, tmp_path: Path, damage: str) -> None:
    root, _ = _case(template, tmp_path, damage)
    plan = next((root / "_faceshard").glob("plan-*.parquet"))
    if damage == "deleted":
        plan.unlink()
    else:
        plan.write_bytes(plan.read_bytes()[:20])
    before = _snapshot(root)
    with pytest.raises(StorageError, match=plan.name):
        Output.open(str(root), config=writers.CONFIG, weights=writers.WEIGHTS)
    assert _snapshot(root) == before
    report = repair_output(str(root))
    assert any("set the plan aside" in a for a in report["actions"]), report
    writers.manifest_build(str(root), IDS)
    assert sorted(read_table(str(root), "videos")["video_id"].to_pylist()) == IDS


# ---------------------------------------------------------------- a user's files


USER_FILES = {
    "notes.txt": b"my notes",
    "videos/clip_000.mp4": b"a user's video",
    "videos/split=train/notes.md": b"about the split",
    "faces/split=train/shard=000001/part-0.parquet": b"a user's own part file",
    "faces/split=train/shard=000001/part-20250101T000000-eee.parquet": b"no epoch in its name",
    "identities/deep/er/x.bin": b"nested",
    "_faceshard/mine.txt": b"inside the state folder",
    "_faceshard/log/README": b"inside the log folder",
    "_faceshard/staging/user.bin": b"inside staging",
    "_faceshard/lease/epoch-notes.json": b"{}",
}


def _users(root: Path) -> dict[str, tuple[bytes, int]]:
    return {name: ((root / name).read_bytes(), (root / name).stat().st_mtime_ns) for name in USER_FILES}


def test_a_users_files_of_every_shape_survive_every_command(tmp_path: Path) -> None:
    root = tmp_path / "out"
    writers.manifest_build(str(root), IDS[:6])
    for name, data in USER_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (1.0, 1.0))  # old: no grace period protects them
    (root / "link").symlink_to(tmp_path)
    expected = _users(root)
    runner = CliRunner()

    commands: list[tuple[str, Callable[[], Any]]] = [
        ("build (grow)", lambda: writers.manifest_build(str(root), IDS)),
        ("build (retry-failed)", lambda: writers.build(str(root), retry_failed=True)),
        ("build --prune", lambda: writers.manifest_build(str(root), IDS[3:], prune=True)),
        ("status --verify", lambda: runner.invoke(app, ["status", str(root), "--verify"])),
        ("repair", lambda: repair_output(str(root))),
        (
            "collector",
            lambda: collector.collect(*fsio.open_fs(str(root)), read_state(*fsio.open_fs(str(root))).log),
        ),
        ("interrupted build", lambda: writers.manifest_build(str(root), IDS, stop_after=0)),
    ]
    for name, command in commands:
        command()
        assert _users(root) == expected, f"{name} touched a user's file"
        assert (root / "link").is_symlink() and tmp_path.exists()

    # --rebuild: the user's Parquet file in a table folder would be read as rows: it refuses, naming it.
    changed = {**writers.CONFIG, "embed": {"dtype": "float32"}}
    with pytest.raises(StorageError, match=r"refusing --rebuild: .*part-0.parquet"):
        writers.manifest_build(str(root), IDS, rebuild=True, config=changed)
    assert _users(root) == expected
    for name in [n for n in USER_FILES if n.endswith(".parquet") and not n.startswith("_")]:
        (root / name).unlink()
        del expected[name]
    writers.manifest_build(str(root), IDS, rebuild=True, config=changed)
    assert _users_left(root, expected) == expected, "--rebuild touched a user's file"
    assert sorted(read_table(str(root), "videos")["video_id"].to_pylist()) == IDS


def _users_left(root: Path, expected: dict[str, Any]) -> dict[str, tuple[bytes, int]]:
    return {name: ((root / name).read_bytes(), (root / name).stat().st_mtime_ns) for name in expected}


def test_an_output_of_the_older_layout_is_refused_until_repair_converts_it(tmp_path: Path) -> None:
    """Layout 2 (per-shard markers under `_faceshard/commits`, metadata in `_faceshard.json`)."""
    root = tmp_path / "out"
    writers.manifest_build(str(root), IDS[:6])
    state = read_state(*fsio.open_fs(str(root)))
    (root / "_faceshard" / "commits").mkdir()
    for shard, marker in state.markers.items():
        old = {k: v for k, v in marker.items() if k != "staging"}
        (root / "_faceshard" / "commits" / f"shard-{shard:06d}.json").write_text(json.dumps(old))
    (root / "_faceshard.json").write_text(json.dumps({**state.metadata, "plan": None}))
    shutil.rmtree(root / "_faceshard" / "log")
    data = {p: p.read_bytes() for name in TABLES for p in (root / name).rglob("*.parquet")}

    with pytest.raises(StorageError, match=r"older faceshard.*faceshard repair"):
        Output.open(str(root), config=writers.CONFIG, weights=writers.WEIGHTS)
    with pytest.raises(StorageError, match="older faceshard"):
        dataset_status(str(root))
    report = repair_output(str(root))
    assert any("converted the older layout" in a for a in report["actions"]), report
    assert {p: p.read_bytes() for p in data} == data
    assert dataset_status(str(root))["committed"] == len(state.markers)
    writers.manifest_build(str(root), IDS)
    assert sorted(read_table(str(root), "videos")["video_id"].to_pylist()) == IDS
