"""fsspec I/O with the two properties the commit protocol needs: atomic writes and retried transients.

Local disk: bytes go to a staging file, are fsynced and renamed into place (rename is atomic).
Object stores: every PUT is atomic already (a multipart upload appears only when completed), so a
file is written straight to its final key.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from fsspec import AbstractFileSystem
from fsspec.asyn import AsyncFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from faceshard.errors import StorageError
from faceshard.faults import maybe_fault

T = TypeVar("T")

RETRY_ATTEMPTS = 4
RETRY_BASE_DELAY_S = 0.05
# A call to a remote store that has had no answer by then is abandoned and retried (fsspec's
# FSTimeoutError is a TimeoutError, so transient): a request a store never answers must not hold a
# shard, and the lease it heartbeats, forever. A write gets its time plus a second per MB sent.
REMOTE_WRITE_TIMEOUT_S = 60.0
REMOTE_READ_TIMEOUT_S = 120.0  # one object read, or deleted
REMOTE_LISTING_TIMEOUT_S = 600.0  # a listing, many objects read at once, a recursive delete

# OSError subclasses that describe the request, not the network: retrying cannot help.
_PERMANENT_OS_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)
_TRANSIENT_NAMES = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ServerDisconnectedError",
    "ClientOSError",
    "ClientPayloadError",
    "IncompleteReadError",
    "ResponseStreamingError",
}
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
}


def open_fs(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """The filesystem and root path of `uri` (a local path or any fsspec URL), without a trailing slash.

    A store with a listings cache (s3fs, gcsfs, adlfs) gets it switched off: s3fs answers a read of
    an object from a listing it cached earlier, so an entry another writer added since was "not
    found" for as long as the process lived, and the log's readers and appenders never saw it.
    """
    options = dict(storage_options or {})
    fs, path = url_to_fs(uri, **options)
    if not is_local(fs) and getattr(getattr(fs, "dircache", None), "use_listings_cache", False):
        fs, path = url_to_fs(uri, **{**options, "use_listings_cache": False})
    path = path.rstrip("/") or "/"
    if isinstance(fs, LocalFileSystem):
        path = os.path.abspath(path)
    return fs, path


def absolute_uri(uri: str) -> str:
    """A local path made absolute (workers of a cluster do not share the driver's working
    directory); URLs with a protocol are returned as they are."""
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def check_writable_folder(uri: str, what: str = "--out") -> None:
    """Refuse, before anything starts or is written, a local output that is a file, lies under a
    file, or cannot be written; object stores answer at the first write (no probe writes here)."""
    fs, root = open_fs(uri)
    if not is_local(fs):
        return
    existing = root
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == root else f"lies under the file {existing}"
        raise StorageError(f"{what} {uri} {where}, not a folder: give a new folder or an earlier output")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StorageError(
            f"{what} {uri} cannot be written ({existing}: permission denied or read-only):"
            " choose a folder you can write, or fix its permissions"
        )


def is_local(fs: AbstractFileSystem) -> bool:
    """Local disk renames atomically; everything else gets direct atomic PUTs."""
    return isinstance(fs, LocalFileSystem)


def is_transient(exc: BaseException) -> bool:
    """Network hiccups, throttling and 5xx answers; never a missing file or a refused permission."""
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    if type(exc).__name__ in _TRANSIENT_NAMES:
        return True
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in _TRANSIENT_CODES or int(status) >= 500
    return isinstance(exc, OSError | TimeoutError)


def retrying(fn: Callable[..., T], *args: Any, attempts: int = RETRY_ATTEMPTS, **kwargs: Any) -> T:
    """Call `fn`, retrying transient failures with exponential backoff (50, 100, 200 ms)."""
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            time.sleep(RETRY_BASE_DELAY_S * 2**attempt)
    raise AssertionError("unreachable")


def put_bytes(fs: AbstractFileSystem, path: str, data: bytes, staging_dir: str) -> None:
    """Write `data` to `path` so that readers see either nothing or the whole file.

    Local: staged under `staging_dir`, fsynced, then renamed over `path`; elsewhere one PUT.
    """
    if is_local(fs):
        retrying(_put_local, path, data, staging_dir)
    else:
        retrying(_put_remote, fs, path, data)


def _put_remote(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    maybe_fault("put", path.rsplit("/", 1)[-1])
    fs.pipe_file(path, data, **_write_deadline(fs, data))


def _deadline(fs: AbstractFileSystem, seconds: float) -> dict[str, float]:
    """fsspec's own per-call timeout, which only its async stores (s3fs, gcsfs, adlfs) take.

    The HTTP clients' own read timeouts are not enough: aiohttp waits for an `Expect: 100-continue`
    answer with no timer at all, and a pooled connection left inconsistent by one answer can stall
    the next request on it.
    """
    return {"timeout": seconds} if isinstance(fs, AsyncFileSystem) else {}


def _write_deadline(fs: AbstractFileSystem, data: bytes) -> dict[str, float]:
    return _deadline(fs, REMOTE_WRITE_TIMEOUT_S + len(data) / 1e6)


def _read_deadline(fs: AbstractFileSystem) -> dict[str, float]:
    return _deadline(fs, REMOTE_READ_TIMEOUT_S)


def _listing_deadline(fs: AbstractFileSystem) -> dict[str, float]:
    return _deadline(fs, REMOTE_LISTING_TIMEOUT_S)


def _put_local(path: str, data: bytes, staging_dir: str) -> None:
    maybe_fault("put", path.rsplit("/", 1)[-1])
    os.makedirs(staging_dir, exist_ok=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(staging_dir, f"{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def create_if_absent(fs: AbstractFileSystem, path: str, data: bytes) -> bool:
    """Write `data` to `path` only if nothing is there: True if this call created it.

    The guarantee depends on the store (docs/DESIGN.md, "Which store gives which guarantee"):
    local disk: the bytes are fsynced in a temporary file that is `link()`ed to `path`, which
    fails atomically if `path` exists (POSIX; also NFSv3+). S3 (AWS since 2024, MinIO, moto):
    a PUT with `If-None-Match: *`. memory://: an exclusive open within the process. Any other
    fsspec store: fsspec's `mode="create"` (check-then-write on most), then a read-back that at
    least catches a lost race on stores whose last writer wins.
    """
    if is_local(fs):
        return retrying(_create_local, path, data)
    # Refused or not, what is there decides: a refusal may answer our own retried PUT whose first
    # attempt landed, and a store that ignored the condition shows the last writer.
    with contextlib.suppress(FileExistsError):
        retrying(_create_remote, fs, path, data)
    return read_optional(fs, path) == data


def _create_remote(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    maybe_fault("put", path.rsplit("/", 1)[-1])
    fs.pipe_file(path, data, mode="create", **_write_deadline(fs, data))


def _create_local(path: str, data: bytes) -> bool:
    maybe_fault("put", path.rsplit("/", 1)[-1])
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.remove(tmp)


def read_bytes(fs: AbstractFileSystem, path: str) -> bytes:
    """The whole object at `path`; FileNotFoundError when absent."""
    return retrying(fs.cat_file, path, **_read_deadline(fs))


def read_optional(fs: AbstractFileSystem, path: str) -> bytes | None:
    """The object at `path`, or None when it does not exist."""
    try:
        return read_bytes(fs, path)
    except FileNotFoundError:
        return None


def read_many(fs: AbstractFileSystem, paths: list[str]) -> dict[str, bytes]:
    """Several small objects at once (concurrent on object stores); missing ones are left out."""
    if not paths:
        return {}
    found = retrying(fs.cat, paths, on_error="return", **_listing_deadline(fs))
    out: dict[str, bytes] = {}
    for path, value in found.items():
        if isinstance(value, bytes):
            out[_strip(fs, path)] = value
        elif not isinstance(value, FileNotFoundError):
            raise value
    return out


def list_files(fs: AbstractFileSystem, path: str) -> list[str]:
    """Every file below `path` (recursively), freshly listed; [] when `path` does not exist.

    A listing proves that a file exists, never that one does not (object store listings may lag):
    nothing is ever deleted because a listing lacks it.
    """
    return sorted(list_files_with_age(fs, path))


def list_files_with_age(fs: AbstractFileSystem, path: str) -> dict[str, float | None]:
    """Like `list_files`, with each file's age in seconds (None where the store does not say)."""
    fs.invalidate_cache(path)
    try:
        found = retrying(fs.find, path, detail=True, **_listing_deadline(fs))
    except FileNotFoundError:
        return {}
    now = time.time()
    out: dict[str, float | None] = {}
    below = _strip(fs, path) + "/"
    for name, info in found.items():
        stripped = _strip(fs, name)
        # Only files strictly below `path` (an object store may answer with the prefix itself).
        if info.get("type") == "directory" or not stripped.startswith(below):
            continue
        modified = _modified(info)
        out[stripped] = None if modified is None else now - modified
    return out


def _modified(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
    return None


def remove_files(fs: AbstractFileSystem, paths: Iterable[str]) -> None:
    """Delete files, tolerating ones already gone (a crashed cleanup may have removed them)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            retrying(fs.rm_file, path, **_read_deadline(fs))


def remove_tree(fs: AbstractFileSystem, path: str) -> None:
    """Delete a directory/prefix and everything below it, if present."""
    fs.invalidate_cache(path)
    try:
        if retrying(fs.exists, path, **_read_deadline(fs)):
            retrying(fs.rm, path, recursive=True, **_listing_deadline(fs))
    except FileNotFoundError:
        pass


def join(*parts: str) -> str:
    """Join fsspec path segments with '/' (also for local paths, which are POSIX here)."""
    return posixpath.join(*parts)


def _strip(fs: AbstractFileSystem, path: str) -> str:
    stripped = fs._strip_protocol(path)
    return stripped.rstrip("/") if isinstance(stripped, str) else str(stripped)
