"""Manifest intake: columns, labels, ids, relative paths and the allowed-roots check."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import polars as pl
import pytest

from faceshard.errors import ManifestError
from faceshard.storage.manifest import derive_video_id, plan_shards, read_manifest
from faceshard.storage.testing import fake_videos


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_relative_paths_resolve_against_the_manifest_and_defaults_apply(tmp_path) -> None:
    manifest = _write(
        tmp_path / "data" / "list.csv",
        "path,label,method,split\nreal/a.mp4,real,,train\nfake/b.mp4,FAKE,deepfakes,\nc.mp4,1,,val\n",
    )
    tasks = read_manifest(manifest)
    assert [t.path for t in tasks] == [
        str(tmp_path / "data" / "real" / "a.mp4"),
        str(tmp_path / "data" / "fake" / "b.mp4"),
        str(tmp_path / "data" / "c.mp4"),
    ]
    assert [t.label for t in tasks] == [0, 1, 1]
    assert [t.method for t in tasks] == [None, "deepfakes", None]
    assert [t.split for t in tasks] == ["train", "all", "val"]
    assert all(t.error is None for t in tasks)
    assert (
        [t.video_id for t in tasks]
        == ["real/a.mp4", "fake/b.mp4", "c.mp4"]
        == [derive_video_id(p) for p in ("real/a.mp4", "fake/b.mp4", "c.mp4")]
    )


def test_derived_ids_are_stable_across_machines_and_unique_for_same_stems(tmp_path) -> None:
    text = "path,label\nx/clip.mp4,0\ny/clip.mp4,1\n"
    first = read_manifest(_write(tmp_path / "one" / "m.csv", text))
    second = read_manifest(_write(tmp_path / "elsewhere" / "two" / "m.csv", text))
    assert [t.video_id for t in first] == [t.video_id for t in second]
    assert first[0].video_id != first[1].video_id


def test_given_video_ids_are_kept_and_duplicates_refused(tmp_path) -> None:
    ok = read_manifest(_write(tmp_path / "m.csv", "path,label,video_id\na.mp4,0,id-1\nb.mp4,1,id-2\n"))
    assert [t.video_id for t in ok] == ["id-1", "id-2"]
    with pytest.raises(ManifestError, match=r"duplicate video ids.*same"):
        read_manifest(_write(tmp_path / "d.csv", "path,label,video_id\na.mp4,0,same\nb.mp4,1,same\n"))
    with pytest.raises(ManifestError, match="duplicate video ids"):
        read_manifest(_write(tmp_path / "p.csv", "path,label\na.mp4,0\n./a.mp4,1\n"))


def test_ids_are_compared_in_one_unicode_form(tmp_path) -> None:
    """Issue 19: "é" typed (NFC) and decomposed (NFD) is one id, so two spellings are a duplicate."""
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    text = f"path,label,video_id\na.mp4,0,{composed}\nb.mp4,1,{decomposed}\n"
    with pytest.raises(ManifestError, match="duplicate video ids"):
        read_manifest(_write(tmp_path / "u.csv", text))
    text = f"path,label\n{decomposed}/a.mp4,0\n{composed}/a.mp4,1\n"
    with pytest.raises(ManifestError, match="duplicate video ids"):
        read_manifest(_write(tmp_path / "v.csv", text))
    (task,) = read_manifest(_write(tmp_path / "w.csv", f"path,label,video_id\na.mp4,0,{decomposed}\n"))
    assert task.video_id == composed


def test_bad_labels_and_missing_columns_are_clear_errors(tmp_path) -> None:
    with pytest.raises(ManifestError, match=r"labels must be 0/1 or real/fake: row 3: 'maybe'"):
        read_manifest(_write(tmp_path / "l.csv", "path,label\na.mp4,0\nb.mp4,maybe\n"))
    with pytest.raises(ManifestError, match=r"row 2: '2'"):
        read_manifest(_write(tmp_path / "n.csv", "path,label\na.mp4,2\n"))
    with pytest.raises(ManifestError, match=r"missing column.*label.*found: path, class"):
        read_manifest(_write(tmp_path / "c.csv", "path,class\na.mp4,0\n"))


def test_paths_outside_the_roots_become_error_tasks(tmp_path) -> None:
    (tmp_path / "outside.mp4").write_bytes(b"x")
    data = tmp_path / "data"
    manifest = _write(
        data / "m.csv",
        f"path,label\nok.mp4,0\n../outside.mp4,1\n{tmp_path / 'other.mp4'},0\nsub/../ok2.mp4,1\n"
        "/etc/passwd,0\n",
    )
    tasks = read_manifest(manifest)
    refused = {t.path: t.error for t in tasks if t.error}
    assert set(refused) == {str(tmp_path / "outside.mp4"), str(tmp_path / "other.mp4"), "/etc/passwd"}
    assert all(e.startswith("path outside allowed roots: ") for e in refused.values())
    assert tasks[0].error is None and tasks[3].error is None and tasks[3].path == str(data / "ok2.mp4")

    widened = read_manifest(manifest, roots=[str(tmp_path)])
    assert [t.path for t in widened if t.error] == ["/etc/passwd"]


def test_symlinks_are_judged_by_their_target(tmp_path) -> None:
    data = tmp_path / "data"
    (data / "real").mkdir(parents=True)
    (data / "real" / "a.mp4").write_bytes(b"x")
    (tmp_path / "secret.mp4").write_bytes(b"x")
    os.symlink(data / "real" / "a.mp4", data / "inside_link.mp4")
    os.symlink(tmp_path / "secret.mp4", data / "escape_link.mp4")
    os.symlink(tmp_path, data / "escape_dir")
    manifest = _write(
        data / "m.csv", "path,label\ninside_link.mp4,0\nescape_link.mp4,1\nescape_dir/secret.mp4,1\n"
    )
    tasks = read_manifest(manifest)
    assert tasks[0].error is None and tasks[0].path == str(data / "inside_link.mp4")
    assert tasks[1].error and "escape_link.mp4" in tasks[1].error
    assert tasks[2].error


def test_root_given_through_a_symlinked_directory(tmp_path) -> None:
    real = tmp_path / "real_data"
    real.mkdir()
    os.symlink(real, tmp_path / "data")
    manifest = _write(real / "m.csv", "path,label\na.mp4,0\n")
    assert read_manifest(manifest, roots=[str(tmp_path / "data")])[0].error is None


def test_parquet_manifest_with_integer_labels(tmp_path) -> None:
    path = tmp_path / "m.parquet"
    pl.DataFrame({"path": ["a.mp4", "b.mp4"], "label": [0, 1], "split": ["train", None]}).write_parquet(path)
    tasks = read_manifest(str(path))
    assert [(t.label, t.split) for t in tasks] == [(0, "train"), (1, "all")]


def test_manifest_on_an_fsspec_url(tmp_path) -> None:
    with fsspec.open("memory://bucket/lists/m.csv", "w") as handle:
        handle.write("path,label\nvids/a.mp4,0\n../../other/b.mp4,1\nmemory://bucket/lists/c.mp4,1\n")
    tasks = read_manifest("memory://bucket/lists/m.csv")
    assert tasks[0].path == "memory://bucket/lists/vids/a.mp4" and tasks[0].error is None
    assert tasks[1].path == "memory://other/b.mp4" and "outside allowed roots" in tasks[1].error
    assert tasks[2].error is None
    assert read_manifest("memory://bucket/lists/m.csv", roots=["memory://"])[1].error is None


def test_plan_shards_is_deterministic_consecutive_chunks() -> None:
    videos = fake_videos(10)
    plans = plan_shards(videos, 4)
    assert [p.shard_id for p in plans] == [0, 1, 2]
    assert [len(p.videos) for p in plans] == [4, 4, 2]
    assert [v for p in plans for v in p.videos] == videos
    assert plan_shards(videos, 4) == plans
    with pytest.raises(ValueError):
        plan_shards(videos, 0)
