"""The commit protocol against a real S3 endpoint (moto's server): no renames, retried transient PUTs."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from conftest import moto_s3

from faceshard.storage import fsio
from faceshard.storage.commit import Output
from faceshard.storage.manifest import ShardPlan, plan_shards
from faceshard.storage.reader import load_faces, read_table
from faceshard.storage.status import dataset_status
from faceshard.storage.testing import fake_shard_tables, fake_videos

BUCKET = "faceshard-test"


@pytest.fixture(scope="module")
def s3_options():
    with moto_s3(BUCKET) as options:
        yield options


def _transient_error():
    from botocore.exceptions import ClientError

    return ClientError(
        {
            "Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
            "ResponseMetadata": {"HTTPStatusCode": 503},
        },
        "PutObject",
    )


def test_s3_round_trip_with_a_retried_transient_write(s3_options, monkeypatch) -> None:
    uri = f"s3://{BUCKET}/build-1"
    plans = plan_shards(fake_videos(8, splits=("train", "val")), 4)
    out = Output.open(uri, config={"k": 1}, weights={}, storage_options=s3_options)
    out.set_plan(plans)

    real_pipe = out.fs.pipe_file
    failures: list[str] = []

    def flaky_pipe(path, data, **kwargs):
        if path.endswith(".parquet") and not failures:
            failures.append(path)
            raise _transient_error()
        return real_pipe(path, data, **kwargs)

    monkeypatch.setattr(out.fs, "pipe_file", flaky_pipe)
    out.commit_shard(plans[0], fake_shard_tables(plans[0], errors={"v00002": "decode failed"}), {})
    monkeypatch.undo()
    assert len(failures) == 1 and "/_faceshard/staging/" in failures[0]
    published = re.sub(r"/_faceshard/staging/[^/]+/", "/", failures[0])
    assert out.fs.exists(published)  # the retried write landed and was moved into place

    status = dataset_status(uri, storage_options=s3_options, verify=True)
    assert (status["committed"], status["pending"], status["corrupt_files"]) == (1, 1, [])
    assert [v["video_id"] for v in status["failed_videos"]] == ["v00002"]
    faces = load_faces(uri, storage_options=s3_options)
    assert len(faces) == 9 and faces.emb_rgb.shape == (9, 8)
    assert read_table(uri, "videos", split="val", storage_options=s3_options).num_rows == 2

    # A crash after publishing shard 1's files: nothing visible, cleaned by the next open.
    append = Output._append

    def killed(self, kind, payload):
        if kind == "commit":
            raise KeyboardInterrupt("killed before the commit entry")
        return append(self, kind, payload)

    monkeypatch.setattr(Output, "_append", killed)
    with pytest.raises(KeyboardInterrupt):
        out.commit_shard(plans[1], fake_shard_tables(plans[1]), {})
    monkeypatch.undo()
    fs, root = fsio.open_fs(uri, s3_options)
    assert any("shard=000001" in p for p in fsio.list_files(fs, f"{root}/_faceshard/staging"))
    assert not any("shard=000001" in p for p in fsio.list_files(fs, f"{root}/faces"))
    assert len(load_faces(uri, storage_options=s3_options)) == 9

    again = Output.open(uri, config={"k": 1}, weights={}, storage_options=s3_options)
    assert fsio.list_files(fs, f"{root}/_faceshard/staging") == []
    assert again.is_committed(plans[0]) and again.pending(plans) == [plans[1]]
    again.commit_shard(plans[1], fake_shard_tables(plans[1]), {})
    retry_plan = ShardPlan(0, [plans[0].videos[2]])
    retry = again.replace_videos(plans[0], fake_shard_tables(retry_plan), {})
    assert retry["status_counts"] == {"ok": 4}
    status = dataset_status(uri, storage_options=s3_options)
    assert (status["committed"], status["failed"], status["pending"], status["ok"]) == (2, 0, 0, True)
    assert status["totals"]["faces"] == 24


def test_an_entry_another_process_wrote_is_read_after_this_process_listed_the_folder(s3_options) -> None:
    """s3fs answers a read from a listing it cached: an entry a second writer added after this process
    listed the log was "not found" for as long as the process lived, and a build appending to the log
    looped forever on it (the S3 build of tests/test_resilience.py hung this way, in CI too)."""
    import json
    import subprocess
    import sys

    fs, root = fsio.open_fs(f"s3://{BUCKET}/second-writer", s3_options)
    log = f"{root}/_faceshard/log"
    fsio.put_bytes(fs, f"{log}/0000000001.json", b"first", staging_dir="unused")
    assert fsio.list_files(fs, log) == [f"{log}/0000000001.json"]  # this process has listed the log
    second_writer = (
        "import json, sys\n"
        "from faceshard.storage import fsio\n"
        "fs, root = fsio.open_fs(sys.argv[1], json.loads(sys.argv[2]))\n"
        "assert fsio.create_if_absent(fs, root + '/_faceshard/log/0000000002.json', b'theirs')\n"
    )
    subprocess.run(
        [sys.executable, "-c", second_writer, f"s3://{BUCKET}/second-writer", json.dumps(s3_options)],
        check=True,
        timeout=120,
    )
    assert fsio.read_optional(fs, f"{log}/0000000002.json") == b"theirs"
    assert not fsio.create_if_absent(fs, f"{log}/0000000002.json", b"mine")  # lost, and told so
    assert fsio.list_files(fs, log) == [f"{log}/0000000001.json", f"{log}/0000000002.json"]


def test_s3_transient_errors_are_classified() -> None:
    assert fsio.is_transient(_transient_error())
    assert fsio.is_transient(ConnectionResetError())
    assert not fsio.is_transient(FileNotFoundError("gone"))
    assert not fsio.is_transient(PermissionError("denied"))
    assert not fsio.is_transient(ValueError("bug"))


def test_a_call_the_store_never_answers_is_abandoned_and_retried(monkeypatch) -> None:
    """A real socket that accepts every request and never answers (a store that hangs): each write,
    read and listing gives up at its deadline and is retried, and the last attempt's timeout reaches
    the caller, instead of holding the shard (and the lease it heartbeats) forever."""
    import socket
    import threading
    import time

    import s3fs

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept_and_stay_silent() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    for deadline in ("REMOTE_WRITE_TIMEOUT_S", "REMOTE_READ_TIMEOUT_S", "REMOTE_LISTING_TIMEOUT_S"):
        monkeypatch.setattr(fsio, deadline, 1.0)
    fs = s3fs.S3FileSystem(
        key="testing",
        secret="testing",
        endpoint_url=f"http://127.0.0.1:{listener.getsockname()[1]}",
        skip_instance_cache=True,
        config_kwargs={"retries": {"max_attempts": 1}},
    )
    calls: Counter[str] = Counter()

    def counted(name: str) -> Callable[..., Any]:
        call = getattr(fs, name)

        def attempt(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return call(*args, **kwargs)

        return attempt

    for name in ("pipe_file", "cat_file", "find"):
        monkeypatch.setattr(fs, name, counted(name))
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            fsio.create_if_absent(fs, f"{BUCKET}/_faceshard/log/0000000001.json", b"{}")
        with pytest.raises(TimeoutError):
            fsio.put_bytes(fs, f"{BUCKET}/ds/faces/part.parquet", b"x" * 1000, staging_dir="unused")
        with pytest.raises(TimeoutError):
            fsio.read_optional(fs, f"{BUCKET}/_faceshard/log/0000000001.json")
        with pytest.raises(TimeoutError):
            fsio.list_files(fs, f"{BUCKET}/_faceshard/log")
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    assert time.monotonic() - started < 60
    attempts = fsio.RETRY_ATTEMPTS  # every call was tried that often, each abandoned at its deadline
    assert calls == {"pipe_file": 2 * attempts, "cat_file": attempts, "find": attempts}
    assert accepted  # and the requests did reach the store
