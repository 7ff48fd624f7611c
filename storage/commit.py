"""The shard commit protocol: the single source of truth for what is done in an output.

Layout under the output root (any fsspec URL):

    _faceshard.json                                  dataset metadata (schema version, config,
                                                     fingerprint, weights, plan summary)
    _faceshard/metadata.backup.json                  the last metadata written (`faceshard repair`)
    _faceshard/lease/epoch-00000007.json             the writer's lease (storage/lease.py)
    _faceshard/rebuild.json                          a --rebuild in progress: {"from", "to"}
    _faceshard/plan.json                             shards_total and each shard's fingerprint
    _faceshard/commits/shard-000042.json             commit marker: files, rows, sha256, stats
    _faceshard/failures/shard-000042.json            a shard whose whole task failed
    _faceshard/staging/<attempt>/<table>/...         files of a commit not yet moved into place
    _faceshard/staging/tmp-e000007/                  local atomic-write temporaries of epoch 7
    {videos,faces,identities}/split=<s>/shard=000042/part-<attempt>.parquet

One writer at a time: `Output.open` takes the output's lease (owner, host, pid, heartbeat, epoch)
and every attempt id carries its epoch (`20260101T000000-e000007-<hex>`). Whatever an older epoch
left unreferenced is provably dead (its build was superseded and fenced); anything else is
deleted only when named by our own markers, never because a listing lacks a file.

Commit of one shard (every data file name carries a unique attempt id):
  1. each file is written under `_faceshard/staging/<attempt>/` (local: temp file, fsync, rename;
     object stores: one atomic PUT);
  2. the lease is checked (fencing) and the marker is written: THE commit point (one atomic
     rename / PUT). Before it nothing of the attempt is visible anywhere; after it readers
     following markers see the whole shard;
  3. publishing, table by table in PUBLISH_ORDER (`videos` last): the superseded commit's file of
     the table is deleted and the staged ones are moved in (rename locally, server-side copy on
     object stores); then the marker is rewritten with `published: true`.
A plain `pyarrow.dataset` listing of `{URI}/{table}` therefore only ever sees committed files, and
a shard's `videos` rows only once its faces and identities are in place. A crash before 2 leaves
staging junk, a crash in 3 a committed-but-unpublished shard: `Output.open` deletes the first
and rolls the second forward.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from faceshard.errors import DamagedOutput, FingerprintMismatch, StorageError
from faceshard.records import VideoTask
from faceshard.storage import fsio
from faceshard.storage.lease import DEFAULT_TTL_S, Lease, LeaseRef
from faceshard.storage.lease import check as check_lease
from faceshard.storage.manifest import ShardPlan
from faceshard.storage.schema import (
    PARTITION_COLUMNS,
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    TABLE_KEY,
    TABLES,
    schema_version_of,
)

if TYPE_CHECKING:  # planning needs polars; workers importing this module must not
    from faceshard.storage.plan import BuildPlan, PriorPlan

METADATA_FILE = "_faceshard.json"
STATE_DIR = "_faceshard"
PLAN_FILE = f"{STATE_DIR}/plan.json"
PLAN_FORMAT = 2
COMMITS_DIR = f"{STATE_DIR}/commits"
FAILURES_DIR = f"{STATE_DIR}/failures"
STAGING_DIR = f"{STATE_DIR}/staging"
METADATA_BACKUP = f"{STATE_DIR}/metadata.backup.json"
REBUILD_FILE = f"{STATE_DIR}/rebuild.json"
# Tables in the order a commit moves their files into place: a shard shows up in `videos` (the
# table readers start from) only when its faces and identities are there already.
PUBLISH_ORDER = ("identities", "faces", "videos")
# Unreferenced files of ours whose writer is unknown (no epoch in the name) must be this old
# before cleanup deletes them: a writer of an older faceshard may still be publishing them.
ORPHAN_GRACE_S = 3600.0
FORMAT = "faceshard"
ROW_GROUP_TARGET_BYTES = 64 << 20
MAX_ERROR_CHARS = 20_000
_DATA_FILE = re.compile(r"part-[0-9A-Za-z_-]+\.parquet$")
_OUR_DATA_PATH = re.compile(r"^(videos|faces|identities)/split=[^/]+/shard=\d+/part-[0-9A-Za-z_-]+\.parquet$")
_EPOCH_TAG = re.compile(r"(?:^|-)e(\d{6,})(?:-|$)")
_NAME_TIME = re.compile(r"(\d{8}T\d{6})")
_MARKER_FILE = re.compile(r"shard-(\d+)\.json$")
_PLAN_VIDEOS_FILE = re.compile(r"plan-[0-9a-f]+\.parquet$")
_DICTIONARY_COLUMNS = ("video_id", "path", "method", "status", "error")


# ---------------------------------------------------------------- fingerprints


def canonical_json(value: Any) -> str:
    """Key-sorted, compact JSON: equal values hash equally whatever their dict order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:16]


def row_affecting_weights(weights: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """What of each model's weights info changes rows: its fingerprint and whether it ran randomly.

    Where a weights record carries no `fingerprint`, all of it except `source` is hashed.
    """
    out: dict[str, Any] = {}
    for name, info in weights.items():
        if "fingerprint" in info:
            out[name] = {"fingerprint": info["fingerprint"], "random": bool(info.get("random", False))}
        else:
            out[name] = {k: v for k, v in info.items() if k != "source"}
    return out


def dataset_fingerprint(
    config: Mapping[str, Any], weights: Mapping[str, Mapping[str, Any]], schema_version: int = SCHEMA_VERSION
) -> str:
    """Hash of everything that changes rows: row-affecting config, weight fingerprints, schema version."""
    return _digest(
        {"config": config, "weights": row_affecting_weights(weights), "schema_version": schema_version}
    )


def shard_fingerprint_of(dataset_fp: str, shard_id: int, video_ids: list[str]) -> str:
    """Hash of the dataset fingerprint, the shard id and the SET of its video ids.

    Paths, labels and manifest order are left out on purpose: they do not identify a video, so a
    relocated corpus or a reordered manifest keeps every committed shard.
    """
    text = "\n".join([dataset_fp, str(shard_id), *sorted(video_ids)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def shard_fingerprint(dataset_fp: str, plan: ShardPlan) -> str:
    """Hash of the dataset fingerprint, the shard id and its video ids (not their paths or order)."""
    return shard_fingerprint_of(dataset_fp, plan.shard_id, [video.video_id for video in plan.videos])


def describe_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """'detect.thresholds: [0.85,0.95,0.95] → [0.6,0.7,0.7]' lines for every changed leaf."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        lines: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                lines.append(f"{name}: (absent) → {canonical_json(new[key])}")
            elif key not in new:
                lines.append(f"{name}: {canonical_json(old[key])} → (absent)")
            else:
                lines.extend(describe_differences(old[key], new[key], name))
        return lines
    if canonical_json(old) == canonical_json(new):
        return []
    return [f"{prefix or '<root>'}: {canonical_json(old)} → {canonical_json(new)}"]


# ---------------------------------------------------------------- helpers


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def new_attempt_id(epoch: int | None = None) -> str:
    """Sortable and unique: UTC time, the writer's lease epoch, a random suffix.

    A retried shard never reuses a file name, and cleanup can tell a dead writer's files (an
    older epoch) from a live one's without trusting listings or clocks.
    """
    tag = "" if epoch is None else f"-e{epoch:06d}"
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}{tag}-{uuid.uuid4().hex[:12]}"


def epoch_of(name: str) -> int | None:
    """The lease epoch in an attempt id / staging entry name, None for names without one."""
    match = _EPOCH_TAG.search(name)
    return int(match.group(1)) if match else None


def is_our_data_file(relative: str) -> bool:
    """`{table}/split=…/shard=…/part-<attempt>.parquet`: the only data files faceshard writes."""
    return bool(_OUR_DATA_PATH.match(relative))


def faceshard_version() -> str:
    try:
        return importlib_metadata.version("faceshard")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def marker_name(shard_id: int) -> str:
    return f"shard-{shard_id:06d}.json"


def data_file_path(table: str, split: str, shard_id: int, attempt: str) -> str:
    """Relative path of one data file; the split is URI-encoded as pyarrow's hive partitioning expects."""
    return f"{table}/split={quote(split, safe='')}/shard={shard_id:06d}/part-{attempt}.parquet"


def load_json_object(data: bytes | None) -> dict[str, Any] | None:
    """The JSON object in `data`; None for no data, unreadable JSON or anything but an object."""
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _dump_json(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True, default=str).encode()


@dataclass
class OutputState:
    """Everything committed in an output, read once: metadata, plan, visible markers, failures."""

    metadata: dict[str, Any]
    plan: dict[str, Any] | None
    markers: dict[int, dict[str, Any]]
    failures: dict[int, dict[str, Any]]

    @property
    def fingerprint(self) -> str:
        return self.metadata["fingerprint"]

    def files(self, table: str, splits: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The committed file entries of `table` (with `shard`), in shard order."""
        wanted = None if splits is None else set(splits)
        return [
            file_entry(marker, entry)
            for _, marker in sorted(self.markers.items())
            for entry in marker["files"][table]
            if wanted is None or entry["split"] in wanted
        ]


def file_entry(marker: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """A file entry with its shard and, while the marker is unpublished, where it was staged."""
    out = {**entry, "shard": marker["shard"]}
    if not marker.get("published", True):
        out["staged_path"] = f"{marker['staging']}/{entry['path']}"
    return out


def locate(fs: AbstractFileSystem, root: str, entry: Mapping[str, Any]) -> str:
    """The full path to read a committed file from: its table path, or staging while unpublished."""
    final = fsio.join(root, entry["path"])
    staged = entry.get("staged_path")
    if staged and not fsio.retrying(fs.exists, final):
        return fsio.join(root, staged)
    return final


def parse_record(data: bytes, path: str, what: str, recovery: str) -> dict[str, Any]:
    """A JSON object read from `path`, or a StorageError saying what is wrong and how to recover."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        problem = f"not valid JSON ({exc})"
    else:
        if isinstance(value, dict):
            return value
        problem = f"a JSON {type(value).__name__}, not an object"
    raise DamagedOutput(f"{path}: the {what} is unreadable: {problem}. Nothing was changed. {recovery}")


def _repair_hint(root: str) -> str:
    return (
        f"Run `faceshard repair {root}` (it restores or rebuilds the metadata and sets aside, never"
        " deletes, what it cannot read), or restore the file from a backup."
    )


def read_metadata(fs: AbstractFileSystem, root: str) -> dict[str, Any] | None:
    """`_faceshard.json` of the output at `root`, or None when there is none.

    Unreadable metadata is a StorageError, never "no output": treating it as absent would accept
    any configuration and let cleanup delete every committed file.
    """
    path = fsio.join(root, METADATA_FILE)
    data = fsio.read_optional(fs, path)
    if data is None:
        return None
    meta = parse_record(data, path, "output's metadata", _repair_hint(root))
    if meta.get("format") != FORMAT or not isinstance(meta.get("fingerprint"), str):
        raise DamagedOutput(
            f"{path} is not a faceshard metadata file (no format/fingerprint). {_repair_hint(root)}"
        )
    return meta


def require_metadata(fs: AbstractFileSystem, root: str) -> dict[str, Any]:
    """The metadata of an existing output; StorageError for no output or one that lost its metadata."""
    metadata = read_metadata(fs, root)
    if metadata is not None:
        return metadata
    if fsio.list_files(fs, fsio.join(root, COMMITS_DIR)):
        raise DamagedOutput(
            f"{fsio.join(root, METADATA_FILE)} is missing but the output has commit markers: its"
            f" metadata was lost. Nothing was changed. {_repair_hint(root)}"
        )
    raise StorageError(f"{root}: not a faceshard output (no {METADATA_FILE})")


def read_plan(fs: AbstractFileSystem, root: str) -> dict[str, Any] | None:
    """`_faceshard/plan.json`, None when absent; StorageError when unreadable."""
    path = fsio.join(root, PLAN_FILE)
    data = fsio.read_optional(fs, path)
    if data is None:
        return None
    hint = (
        f"The plan is derived from the manifest: `faceshard repair {root}` sets it aside and the next"
        " build writes it again; no committed data is touched."
    )
    plan = parse_record(data, path, "shard plan", hint)
    if not isinstance(plan.get("shards"), list):
        raise DamagedOutput(f"{path}: the shard plan has no list of shards. Nothing was changed. {hint}")
    return plan


def read_state(fs: AbstractFileSystem, root: str) -> OutputState:
    """The committed view of an output: only markers that match the dataset (and plan) are kept."""
    metadata = require_metadata(fs, root)
    fingerprint = metadata["fingerprint"]
    plan = read_plan(fs, root)
    if plan is not None and plan.get("dataset_fingerprint") != fingerprint:
        plan = None
    planned = _planned_fingerprints(plan)
    markers = {
        shard: marker
        for shard, marker in _read_records(fs, fsio.join(root, COMMITS_DIR)).items()
        if marker.get("dataset_fingerprint") == fingerprint
        and (planned is None or planned.get(shard) == marker.get("fingerprint"))
    }
    failures = {
        shard: record
        for shard, record in _read_records(fs, fsio.join(root, FAILURES_DIR)).items()
        if record.get("dataset_fingerprint") == fingerprint
        and (planned is None or planned.get(shard) == record.get("fingerprint"))
    }
    return OutputState(metadata, plan, markers, failures)


def _planned_fingerprints(plan: dict[str, Any] | None) -> dict[int, str] | None:
    if plan is None:
        return None
    return {int(shard): fp for shard, fp, _ in plan["shards"]}


def _read_records(fs: AbstractFileSystem, directory: str) -> dict[int, dict[str, Any]]:
    """Every `shard-N.json` under `directory`, parsed.

    An unreadable record is a StorageError: skipping a commit marker would turn its shard's files
    into "orphans" for cleanup to delete.
    """
    paths = {p: int(m.group(1)) for p in fsio.list_files(fs, directory) if (m := _MARKER_FILE.search(p))}
    out: dict[int, dict[str, Any]] = {}
    root = directory.rsplit(f"/{STATE_DIR}/", 1)[0]
    for path, data in fsio.read_many(fs, list(paths)).items():
        if path in paths:
            out[paths[path]] = parse_record(data, path, "shard record", _repair_hint(root))
    return out


def read_files(
    fs: AbstractFileSystem, root: str, entries: list[dict[str, Any]], columns: list[str] | None = None
) -> pa.Table | None:
    """Concatenate committed files, adding the `split`/`shard` partition columns from their entries."""
    tables = []
    for entry in entries:
        table = _read_committed_file(fs, root, entry, columns)
        n = table.num_rows
        table = table.append_column("split", pa.array([entry["split"]] * n, pa.string()))
        table = table.append_column("shard", pa.array([entry["shard"]] * n, pa.int32()))
        tables.append(table)
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def _read_committed_file(
    fs: AbstractFileSystem, root: str, entry: Mapping[str, Any], columns: list[str] | None
) -> pa.Table:
    """One committed file; if it was moved out of staging between locating and opening, again."""
    for attempt in range(3):
        try:
            with fs.open(locate(fs, root, entry), "rb") as handle:
                return pq.read_table(handle, columns=columns)
        except FileNotFoundError:
            if attempt == 2 or "staged_path" not in entry:
                raise
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- the output


class Output:
    """One output URI being built. Small and picklable: workers re-open the filesystem lazily.

    `Output.open` (driver, once per run) takes the output's lease, checks the fingerprint and
    cleans crashed writes; workers receive the pickled object (uri, fingerprint, storage options,
    lease epoch and token) and never re-validate, but every commit checks the lease (fencing).
    `close()` (or leaving a `with` block) releases the lease.
    """

    def __init__(
        self,
        uri: str,
        fingerprint: str,
        storage_options: dict[str, Any] | None = None,
        lease: LeaseRef | None = None,
    ) -> None:
        self.uri = uri
        self.fingerprint = fingerprint
        self.storage_options = dict(storage_options or {})
        self.lease = lease
        self._held: Lease | None = None  # the driver's heartbeating lease; never pickled
        self._fs: AbstractFileSystem | None = None
        self._root: str | None = None

    # -- construction

    @classmethod
    def open(
        cls,
        uri: str,
        *,
        config: Mapping[str, Any] | Any,
        weights: Mapping[str, Mapping[str, Any]],
        rebuild: bool = False,
        storage_options: dict[str, Any] | None = None,
        wait_s: float = 0.0,
        lease_ttl_s: float = DEFAULT_TTL_S,
        owner: str | None = None,
    ) -> Output:
        """Take the output's lease, then create or resume the output at `uri` for this configuration.

        `config` is the row-affecting config dict (`BuildConfig.row_affecting()`), or a BuildConfig
        (its full resolved config is then recorded too). Another live build holding the output
        raises OutputBusy naming it (after waiting up to `wait_s`). A different dataset fingerprint
        raises FingerprintMismatch naming the changed keys unless `rebuild`, which discards every
        committed shard first; an interrupted rebuild is finished by a later open with the new
        configuration (no flag needed) or cancelled by one with the original configuration.
        Files that dead writers left behind are deleted; unreadable metadata is a StorageError.
        """
        row_config, resolved = _config_views(config)
        weights = {name: dict(info) for name, info in weights.items()}
        fingerprint = dataset_fingerprint(row_config, weights)
        out = cls(uri, fingerprint, storage_options)
        fs, root = out.fs, out.root
        if read_metadata(fs, root) is None:
            out._refuse_unexplained_state()  # before the lease: write nothing into a foreign directory
        held = Lease.acquire(fs, root, owner=owner, ttl_s=lease_ttl_s, wait_s=wait_s, uri=uri)
        out._held, out.lease = held, held.ref
        try:
            existing = read_metadata(fs, root)
            if existing is None:
                out._refuse_unexplained_state()
            read_plan(fs, root)  # an unreadable plan stops the build here, before anything is written
            intent = out._rebuild_intent()
            metadata = {
                "format": FORMAT,
                "schema_version": SCHEMA_VERSION,
                "fingerprint": fingerprint,
                "created_at": now_iso(),
                "opened_at": now_iso(),
                "faceshard_version": faceshard_version(),
                "row_affecting": row_config,
                "config": resolved,
                "weights": weights,
                "random_weights": sorted(n for n, w in weights.items() if w.get("random")),
                "plan": None,
            }
            if existing is None:
                out._write_metadata(metadata)
            elif existing["fingerprint"] == fingerprint and intent is None:
                keep = {k: existing.get(k) for k in ("created_at", "plan")}
                out._write_metadata(metadata | keep)
            else:
                resuming = intent is not None and fingerprint in (intent.get("from"), intent.get("to"))
                if existing["fingerprint"] != fingerprint and not (rebuild or resuming):
                    raise FingerprintMismatch(
                        _mismatch_message(uri, existing, row_config, weights, fingerprint)
                    )
                out._rebuild(existing, metadata)
            out.cleanup()
        except BaseException:
            out.close()
            raise
        return out

    @classmethod
    def preview(
        cls,
        uri: str,
        *,
        config: Mapping[str, Any] | Any,
        weights: Mapping[str, Mapping[str, Any]],
        rebuild: bool = False,
        storage_options: dict[str, Any] | None = None,
    ) -> tuple[Output, bool]:
        """What `open` would find, writing nothing: (output, whether its committed state is kept).

        Raises FingerprintMismatch exactly where `open` would; a foreign directory is refused too.
        """
        row_config, _ = _config_views(config)
        weights = {name: dict(info) for name, info in weights.items()}
        fingerprint = dataset_fingerprint(row_config, weights)
        out = cls(uri, fingerprint, storage_options)
        existing = read_metadata(out.fs, out.root)
        if existing is None:
            out._refuse_unexplained_state()
            return out, False
        if existing["fingerprint"] != fingerprint and not rebuild:
            raise FingerprintMismatch(_mismatch_message(uri, existing, row_config, weights, fingerprint))
        return out, not rebuild

    def close(self) -> None:
        """Release the lease (the next build takes it at once); idempotent, driver-side only."""
        held, self._held = self._held, None
        if held is not None:
            held.release()

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "fingerprint": self.fingerprint,
            "storage_options": self.storage_options,
            "lease": self.lease,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["uri"], state["fingerprint"], state["storage_options"], state.get("lease"))  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Output({self.uri!r}, fingerprint={self.fingerprint!r})"

    @property
    def fs(self) -> AbstractFileSystem:
        if self._fs is None:
            self._fs, self._root = fsio.open_fs(self.uri, self.storage_options)
        return self._fs

    @property
    def root(self) -> str:
        if self._root is None:
            self._fs, self._root = fsio.open_fs(self.uri, self.storage_options)
        return self._root

    # -- plan and state

    def shard_fingerprint(self, plan: ShardPlan) -> str:
        return shard_fingerprint(self.fingerprint, plan)

    def set_plan(self, plans: list[ShardPlan]) -> None:
        """Record exactly these shards as the output's plan (tests and tools; builds use `apply_plan`).

        Nothing is deleted: a committed shard the plan no longer names (or names with other videos)
        just stops being visible through status and the reader.
        """
        ids = [plan.shard_id for plan in plans]
        if len(set(ids)) != len(ids):
            raise ValueError("set_plan: shard ids must be unique")
        shards = pa.table(
            {
                "shard": pa.array([plan.shard_id for plan in plans for _ in plan.videos], pa.int64()),
                "video_id": pa.array([v.video_id for plan in plans for v in plan.videos], pa.string()),
            }
        )
        self._write_plan(shards, {plan.shard_id: self.shard_fingerprint(plan) for plan in plans}, {})

    def prior_plan(self) -> PriorPlan:
        """The recorded plan, which of its shards are committed, and the next unused shard id.

        An output written before plans recorded video ids (or one whose plan was lost) has its
        committed shards adopted: their ids are read from their committed `videos` files.
        """
        import polars as pl

        from faceshard.storage.plan import PLAN_SCHEMA, PriorPlan, empty_plan_frame

        state = self.state()
        doc = state.plan
        if doc is not None and doc.get("videos_file"):
            data = fsio.read_optional(self.fs, self._path(doc["videos_file"]))
            if data is None:
                raise DamagedOutput(
                    f"{self.uri}: {doc['videos_file']} (named by {PLAN_FILE}) is missing; the plan"
                    " cannot be read, so nothing can be skipped safely"
                )
            shards = pl.from_arrow(pq.read_table(pa.BufferReader(data))).cast(PLAN_SCHEMA)
            fingerprints = {int(s): fp for s, fp, _ in doc["shards"]}
            shards = shards.filter(pl.col("shard").is_in(list(fingerprints)))
        else:
            parts = [
                self.committed_rows(shard, "videos", ["video_id"]).select(["shard", "video_id"])
                for shard in sorted(state.markers)
            ]
            shards = pl.from_arrow(pa.concat_tables(parts)).cast(PLAN_SCHEMA) if parts else empty_plan_frame()
            fingerprints = {shard: marker["fingerprint"] for shard, marker in state.markers.items()}
        used = [*fingerprints, *self._record_ids(COMMITS_DIR), *self._record_ids(FAILURES_DIR)]
        return PriorPlan(
            shards=shards,
            fingerprints=fingerprints,
            committed=set(state.markers) & set(fingerprints),
            next_shard=max(used, default=-1) + 1,
        )

    def apply_plan(self, plan: BuildPlan) -> None:
        """Record a build's plan and carry out its pruning (the only deletion a plan can cause).

        Order keeps every step safe to crash in: shards pruned whole lose their marker (and then the
        files it names) first; then the plan is written; then shards pruned in part are recommitted
        with their remaining videos' rows (until then the plan shows them pending, never twice).
        """
        for shard in plan.prune_drop:
            marker = self.marker(shard)
            if marker is not None:
                self.retire_shard(shard, marker)
        notes = {"not_in_manifest": plan.not_in_manifest, "manifest_videos": plan.videos_total}
        self._write_plan(plan.shards.to_arrow(), plan.fingerprints(self.fingerprint), notes)
        for shard, keep in plan.prune_keep.items():
            self._recommit_without_others(shard, keep)
        # Dropped shards never committed under the plan; a stale marker's files would linger in listings.
        for shard in plan.dropped:
            marker = self.marker(shard)
            if marker is not None:
                self.retire_shard(shard, marker)
        failures = [*plan.dropped, *plan.prune_drop]
        fsio.remove_files(self.fs, [self._path(FAILURES_DIR, marker_name(s)) for s in failures])

    def _recommit_without_others(self, shard_id: int, keep: list[str]) -> None:
        """Commit the shard again holding only the rows of `keep` (prune): a new attempt, atomically."""
        marker = self.marker(shard_id)
        if marker is None:
            return
        wanted = pa.array(keep, pa.string())
        tables = {}
        for name in TABLES:
            rows = _without_partitions(self.committed_rows(shard_id, name))
            tables[name] = rows.filter(pc.is_in(rows["video_id"], value_set=wanted))
        videos = self.committed_rows(shard_id, "videos", ["video_id", "path", "label", "method", "error"])
        videos = videos.filter(pc.is_in(videos["video_id"], value_set=wanted))
        plan = ShardPlan(
            shard_id,
            [
                VideoTask(r["video_id"], r["path"], r["label"], r["method"], r["split"], r["error"])
                for r in videos.to_pylist()
            ],
        )
        stats = {**(marker.get("stats") or {}), "pruned_videos": marker["rows"]["videos"] - len(keep)}
        self.commit_shard(plan, tables, stats)

    def _write_plan(self, shards: pa.Table, fingerprints: dict[int, str], notes: dict[str, Any]) -> None:
        """The plan's video ids (content-named Parquet) first, then `plan.json` naming it: one switch.

        Arrow only (no polars): workers and forked writers call `set_plan` too.
        """
        shards = shards.select(["shard", "video_id"]).cast(
            pa.schema([("shard", pa.int64()), ("video_id", pa.string())])
        )
        sink = pa.BufferOutputStream()
        pq.write_table(shards, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        videos_file = f"{STATE_DIR}/plan-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
        if not fsio.retrying(self.fs.exists, self._path(videos_file)):  # named by its content
            self._put(videos_file, data)
        counts = {row["values"]: row["counts"] for row in pc.value_counts(shards["shard"]).to_pylist()}
        plan_doc = {
            "format": PLAN_FORMAT,
            "dataset_fingerprint": self.fingerprint,
            "shards_total": len(fingerprints),
            "videos_total": shards.num_rows,
            "shards": [[shard, fp, counts.get(shard, 0)] for shard, fp in fingerprints.items()],
            "videos_file": videos_file,
            **notes,
        }
        self._put(PLAN_FILE, _dump_json(plan_doc))
        metadata = self.metadata()
        metadata["plan"] = {k: plan_doc[k] for k in ("shards_total", "videos_total")}
        self._write_metadata(metadata)
        try:
            listed = fsio.retrying(self.fs.ls, self._path(STATE_DIR), detail=False)
        except FileNotFoundError:
            listed = []
        stale = [p for p in listed if _PLAN_VIDEOS_FILE.search(p) and not p.endswith(videos_file)]
        fsio.remove_files(self.fs, stale)

    def _record_ids(self, directory: str) -> list[int]:
        """Shard ids of the marker/failure files present (listing only, no reads)."""
        found = fsio.list_files(self.fs, self._path(directory))
        return [int(m.group(1)) for p in found if (m := _MARKER_FILE.search(p))]

    def metadata(self) -> dict[str, Any]:
        """The current `_faceshard.json`."""
        meta = read_metadata(self.fs, self.root)
        if meta is None:
            raise StorageError(f"{self.uri}: not a faceshard output (no {METADATA_FILE})")
        return meta

    def state(self) -> OutputState:
        """The committed view (metadata, plan, visible markers, failures) in one pass."""
        return read_state(self.fs, self.root)

    def marker(self, shard_id: int) -> dict[str, Any] | None:
        """The shard's commit marker if it belongs to this dataset fingerprint."""
        path = self._path(COMMITS_DIR, marker_name(shard_id))
        data = fsio.read_optional(self.fs, path)
        if data is None:
            return None
        marker = parse_record(data, path, "shard record", _repair_hint(self.root))
        return marker if marker.get("dataset_fingerprint") == self.fingerprint else None

    def is_committed(self, plan: ShardPlan) -> bool:
        """The shard's marker exists and was written for exactly these videos and this fingerprint."""
        marker = self.marker(plan.shard_id)
        return marker is not None and marker.get("fingerprint") == self.shard_fingerprint(plan)

    def pending(self, plans: list[ShardPlan]) -> list[ShardPlan]:
        """The plans not committed yet, from one listing of the markers (cheap for 10⁴+ shards)."""
        markers = self._all_records(COMMITS_DIR)
        return [
            plan
            for plan in plans
            if (m := markers.get(plan.shard_id)) is None
            or m.get("dataset_fingerprint") != self.fingerprint
            or m.get("fingerprint") != self.shard_fingerprint(plan)
        ]

    def shards_with_errors(self) -> list[int]:
        """Committed shards holding at least one `error` video row (from the markers, no data read)."""
        return sorted(
            shard
            for shard, marker in self.state().markers.items()
            if marker.get("status_counts", {}).get("error", 0) > 0
        )

    def failures(self) -> dict[int, dict[str, Any]]:
        """Failure records of shards whose whole task failed and that have not committed since."""
        state = self.state()
        return {shard: rec for shard, rec in state.failures.items() if shard not in state.markers}

    # -- reading committed rows

    def committed_rows(self, shard_id: int, table: str, columns: list[str] | None = None) -> pa.Table:
        """The committed rows of one shard's table, with `split` and `shard` columns."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; one of {', '.join(TABLES)}")
        marker = self.marker(shard_id)
        if marker is None:
            raise StorageError(f"{self.uri}: shard {shard_id} is not committed")
        entries = [file_entry(marker, entry) for entry in marker["files"][table]]
        result = read_files(self.fs, self.root, entries, columns)
        if result is None:
            raise StorageError(f"{self.uri}: shard {shard_id} has no {table} files")
        return result

    def failed_video_ids(self, shard_id: int) -> list[str]:
        """Video ids of the shard whose committed `videos` row says `error`, in row order."""
        videos = self.committed_rows(shard_id, "videos", columns=["video_id", "status"])
        return videos.filter(pc.equal(videos["status"], "error"))["video_id"].to_pylist()

    # -- writing

    def commit_shard(
        self, plan: ShardPlan, tables: Mapping[str, pa.Table], stats: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Publish the shard's three tables and then its marker; returns the marker.

        `tables` are the logical tables of `storage.schema` (partition columns included or not).
        The videos table must hold exactly one row per planned video. Files of a previous commit
        of this shard are deleted after the new marker is in place.
        """
        shard_fp = self.shard_fingerprint(plan)
        self._check_writable()
        prepared = _prepare_tables(plan, tables)
        attempt = new_attempt_id(self.lease.epoch if self.lease else None)
        staging = f"{STAGING_DIR}/{attempt}"
        files: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES}
        total_bytes = 0
        for name in TABLES:
            for split, part in prepared[name]:
                data = _parquet_bytes(part)
                path = data_file_path(name, split, plan.shard_id, attempt)
                self._put(f"{staging}/{path}", data)
                files[name].append(
                    {
                        "path": path,
                        "split": split,
                        "rows": part.num_rows,
                        "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                )
                total_bytes += len(data)
        previous = self.marker(plan.shard_id)
        history = (previous or {}).get("history", [])
        if previous is not None:
            history = [*history, {k: previous.get(k) for k in ("attempt", "committed_at", "stats")}]
        marker = {
            "shard": plan.shard_id,
            "fingerprint": shard_fp,
            "dataset_fingerprint": self.fingerprint,
            "attempt": attempt,
            "epoch": self.lease.epoch if self.lease else None,
            "committed_at": now_iso(),
            "published": False,
            "staging": staging,
            "files": files,
            "rows": {name: sum(f["rows"] for f in files[name]) for name in TABLES},
            "bytes": total_bytes,
            "status_counts": dict(Counter(prepared["videos_status"])),
            "stats": dict(stats or {}),
            "history": history[-10:],
        }
        self._check_writable()  # fencing: right before the commit point
        self._write_marker(plan.shard_id, marker)
        fsio.remove_files(self.fs, [self._path(FAILURES_DIR, marker_name(plan.shard_id))])
        return self._publish(marker, previous)

    def replace_videos(
        self, plan: ShardPlan, tables: Mapping[str, pa.Table], stats: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Commit a shard in which the videos of `tables["videos"]` were reprocessed (retry-failed).

        Their committed rows (in all three tables) are replaced by the new ones, every other
        video's rows are kept; the result is committed atomically as a new attempt and the
        superseded files are deleted.
        """
        replaced = pa.array(sorted(set(tables["videos"]["video_id"].to_pylist())), pa.string())
        order = {video.video_id: i for i, video in enumerate(plan.videos)}
        merged: dict[str, pa.Table] = {}
        for name in TABLES:
            old = _without_partitions(self.committed_rows(plan.shard_id, name))
            kept = old.filter(pc.invert(pc.is_in(old["video_id"], value_set=replaced)))
            new = _without_partitions(tables[name])
            combined = pa.concat_tables([kept, new.select(kept.column_names).cast(kept.schema)])
            # Back into manifest order (stable within a video) so a retried shard reads like a fresh one.
            rank = [order[v] for v in combined["video_id"].to_pylist()]
            merged[name] = combined.take(sorted(range(len(rank)), key=rank.__getitem__))
        return self.commit_shard(plan, merged, stats)

    def record_failure(self, plan: ShardPlan, error: str) -> None:
        """Record that the shard's whole task failed; status counts it failed until it commits."""
        self._check_writable()
        text = error if len(error) <= MAX_ERROR_CHARS else error[:MAX_ERROR_CHARS] + " …(truncated)"
        record = {
            "shard": plan.shard_id,
            "fingerprint": self.shard_fingerprint(plan),
            "dataset_fingerprint": self.fingerprint,
            "error": text,
            "videos": len(plan.videos),
            "at": now_iso(),
        }
        self._put(fsio.join(FAILURES_DIR, marker_name(plan.shard_id)), _dump_json(record))

    # -- maintenance

    def cleanup(self) -> dict[str, int]:
        """Finish interrupted publishing and delete what provably dead writers left behind.

        Under the lease (no other writer is live; older epochs are fenced): markers of another
        fingerprint are retired, committed-but-unpublished shards are rolled forward, and a data
        or staging file is deleted only if it follows our naming, no marker names it, and its
        writer is dead (an older epoch in its name; without one, older than ORPHAN_GRACE_S). A
        file absent from a listing is never a reason to delete anything: committed files are not
        checked here at all (`status --verify` and `faceshard repair` do that).
        """
        self._check_writable()
        # Listed before the markers are read: a file published after the listing is not in it,
        # and one published before it has its marker written already (the marker goes first).
        listed = {
            path: age
            for name in TABLES
            for path, age in fsio.list_files_with_age(self.fs, self._path(name)).items()
        }
        markers: dict[int, dict[str, Any]] = {}
        dropped = rolled_forward = 0
        for shard, marker in sorted(self._all_records(COMMITS_DIR).items()):
            if marker.get("dataset_fingerprint") == self.fingerprint:
                markers[shard] = marker
            else:
                self.retire_shard(shard, marker)
                dropped += 1
        referenced = {self._path(p) for marker in markers.values() for p in _marker_paths(marker)}
        candidates = [
            path
            for path, age in sorted(listed.items())
            if path not in referenced
            and is_our_data_file(self._relative(path))
            and self._writer_is_dead(path.rsplit("/", 1)[-1], age)
        ]
        staged = self._dead_staging()
        # The marker listing may lag too: before anything goes, the marker of every shard it
        # concerns is read directly, and what that marker names (or stages) stays.
        shards = {shard for path in [*candidates, *staged.values()] for shard in _shards_in(path)}
        for shard in sorted(shards - set(markers)):
            marker = self._read_any_marker(shard)
            if marker is not None and marker.get("dataset_fingerprint") == self.fingerprint:
                markers[shard] = marker
        keep = {self._path(p) for marker in markers.values() for p in _marker_paths(marker)}
        keep |= {
            self._path(m["staging"])
            for m in markers.values()
            if not m.get("published", True) and m.get("staging")
        }
        orphans = [path for path in candidates if path not in keep]
        # Unreferenced files go before any roll-forward moves files in: an interrupted replacement's
        # old files must vanish before its new ones appear, or a listing would see videos twice.
        fsio.remove_files(self.fs, orphans)
        for shard, marker in sorted(markers.items()):
            if not marker.get("published", True):
                try:
                    self._publish(marker, None)
                except FileNotFoundError as exc:
                    raise DamagedOutput(
                        f"{self.uri}: shard {shard} is committed but its file is missing ({exc}; checked"
                        f" directly, not by listing). Nothing was deleted. {_repair_hint(self.root)}"
                    ) from None
                rolled_forward += 1
        dead = [entry for entry in staged if entry not in keep]
        for entry in dead:
            fsio.remove_tree(self.fs, entry)
        for shard, record in self._all_records(FAILURES_DIR).items():
            if record.get("dataset_fingerprint") != self.fingerprint:
                fsio.remove_files(self.fs, [self._path(FAILURES_DIR, marker_name(shard))])
        return {
            "orphan_files": len(orphans),
            "dropped_markers": dropped,
            "rolled_forward": rolled_forward,
            "staging_removed": len(dead),
        }

    def retire_shard(self, shard_id: int, marker: Mapping[str, Any] | None) -> None:
        """Un-commit one shard: its marker goes first (status and reader drop it at once), then
        exactly the files that marker names, `videos` first (plain hive readers drop it next).

        Deletes nothing the marker does not name: the one way to discard committed rows
        (--rebuild, --prune) without touching files faceshard never wrote.
        """
        fsio.remove_files(self.fs, [self._path(COMMITS_DIR, marker_name(shard_id))])
        if marker is not None:
            fsio.remove_files(
                self.fs, [self._path(p) for p in _marker_paths(marker, reversed(PUBLISH_ORDER))]
            )
            if not marker.get("published", True) and marker.get("staging"):
                fsio.remove_tree(self.fs, self._path(marker["staging"]))

    def _remove_marker(self, shard_id: int, marker: Mapping[str, Any] | None) -> None:
        self.retire_shard(shard_id, marker)

    # -- internals

    def _path(self, *parts: str) -> str:
        return fsio.join(self.root, *parts)

    def _relative(self, path: str) -> str:
        return path[len(self.root) + 1 :] if path.startswith(self.root + "/") else path

    def _put(self, relative: str, data: bytes) -> None:
        tmp_dir = f"{STAGING_DIR}/tmp-e{self.lease.epoch:06d}" if self.lease else f"{STAGING_DIR}/tmp"
        fsio.put_bytes(self.fs, self._path(relative), data, self._path(tmp_dir))

    def _write_metadata(self, metadata: dict[str, Any]) -> None:
        """`_faceshard.json`, then its backup copy (what `faceshard repair` restores from)."""
        data = _dump_json(metadata)
        self._put(METADATA_FILE, data)
        self._put(METADATA_BACKUP, data)

    def _write_marker(self, shard_id: int, marker: dict[str, Any]) -> None:
        """The commit point: once this PUT/rename lands the shard is visible, not a moment before."""
        self._put(fsio.join(COMMITS_DIR, marker_name(shard_id)), _dump_json(marker))

    def _publish(self, marker: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
        """Step 3 of a commit (idempotent, so `cleanup` can roll it forward after a crash).

        Table by table in PUBLISH_ORDER, `videos` last: a plain listing of `videos` shows the shard
        only once its faces and identities are in place. A replacement (retry-failed) first takes
        the superseded `videos` files away, then swaps each table's files (old out, then new in),
        so a reader starting from `videos` sees the old shard, no shard, or the new shard, never a
        mix, and no table ever holds a video twice.
        """
        shard = marker["shard"]
        paths = _marker_paths(marker)
        keep = set(paths)
        old = {} if previous is None else {name: _marker_paths(previous, (name,)) for name in TABLES}
        fsio.remove_files(self.fs, [self._path(p) for p in old.get("videos", []) if p not in keep])
        for name in PUBLISH_ORDER:
            fsio.remove_files(self.fs, [self._path(p) for p in old.get(name, []) if p not in keep])
            for entry in marker["files"][name]:
                self._move_into_place(f"{marker['staging']}/{entry['path']}", entry["path"])
        if previous is not None and not previous.get("published", True) and previous.get("staging"):
            fsio.remove_tree(self.fs, self._path(previous["staging"]))
        current = self.marker(shard)
        if current is None or current.get("attempt") != marker["attempt"]:
            # A concurrent commit of the same shard (a zombie retry) won: ours are now orphans.
            fsio.remove_files(self.fs, [self._path(p) for p in paths])
            return current or marker
        published = {k: v for k, v in marker.items() if k != "staging"} | {"published": True}
        self._write_marker(shard, published)
        fsio.remove_tree(self.fs, self._path(marker["staging"]))
        return published

    def _move_into_place(self, staged: str, final: str) -> None:
        """Rename (local) or server-side copy + delete (object stores); done already is fine."""
        fs, src, dst = self.fs, self._path(staged), self._path(final)
        if fsio.is_local(fs):
            if os.path.exists(src):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.replace(src, dst)
            elif not os.path.exists(dst):
                raise FileNotFoundError(f"committed file lost before publishing: {src}")
            return
        try:
            fsio.retrying(fs.copy, src, dst)
        except FileNotFoundError:
            if not fsio.retrying(fs.exists, dst):
                raise FileNotFoundError(f"committed file lost before publishing: {src}") from None
        fsio.remove_files(fs, [src])

    def _all_records(self, directory: str) -> dict[int, dict[str, Any]]:
        return _read_records(self.fs, self._path(directory))

    def _check_writable(self) -> None:
        """Fencing: this writer's lease is still the output's, and the fingerprint unchanged."""
        if self._held is not None and self._held.lost:
            raise StorageError(f"{self.uri}: this build lost its lease: {self._held.lost}")
        check_lease(self.fs, self.root, self.lease)
        meta = read_metadata(self.fs, self.root)
        if meta is None or meta["fingerprint"] != self.fingerprint:
            found = None if meta is None else meta["fingerprint"]
            raise StorageError(
                f"{self.uri}: the output now has fingerprint {found} (rebuilt while this shard ran?);"
                f" refusing to commit rows of fingerprint {self.fingerprint}"
            )

    def _writer_is_dead(self, name: str, age: float | None) -> bool:
        """Provably dead: an older lease epoch in the name; without one, older than the grace period."""
        epoch = epoch_of(name)
        if epoch is not None:
            return self.lease is not None and epoch < self.lease.epoch
        stamped = _NAME_TIME.search(name)
        if age is None and stamped:
            written = dt.datetime.strptime(stamped.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
            age = (dt.datetime.now(dt.UTC) - written).total_seconds()
        return age is not None and age > ORPHAN_GRACE_S

    def _dead_staging(self) -> dict[str, str]:
        """Top-level staging entries (attempt dirs, temp dirs, stray files) of dead writers, each
        with its files' paths joined (they say which shards the entry stages)."""
        staging = self._path(STAGING_DIR)
        youngest: dict[str, float | None] = {}
        files: dict[str, list[str]] = {}
        for path, age in fsio.list_files_with_age(self.fs, staging).items():
            entry = fsio.join(staging, path[len(staging) + 1 :].split("/", 1)[0])
            files.setdefault(entry, []).append(path)
            ages = [a for a in (youngest.get(entry), age) if a is not None]
            youngest[entry] = min(ages) if ages else None
        return {
            entry: "\n".join(files[entry])
            for entry, age in sorted(youngest.items())
            if self._writer_is_dead(entry.rsplit("/", 1)[-1], age)
        }

    def _read_any_marker(self, shard_id: int) -> dict[str, Any] | None:
        """The shard's marker read directly (a GET, consistent where listings are not), any fingerprint."""
        path = self._path(COMMITS_DIR, marker_name(shard_id))
        data = fsio.read_optional(self.fs, path)
        return None if data is None else parse_record(data, path, "shard record", _repair_hint(self.root))

    def _rebuild_intent(self) -> dict[str, Any] | None:
        data = fsio.read_optional(self.fs, self._path(REBUILD_FILE))
        if data is None:
            return None
        return parse_record(
            data, self._path(REBUILD_FILE), "record of a --rebuild in progress", _repair_hint(self.root)
        )

    def _rebuild(self, existing: dict[str, Any], metadata: dict[str, Any]) -> None:
        """Discard every shard of another fingerprint, resumably, then switch the metadata.

        The intent (`rebuild.json`: from, to) is written first and removed last. Until the metadata
        is switched the output stays a valid output of the old fingerprint with fewer shards, so a
        kill anywhere leaves: status and readers consistent, an open with the new configuration
        that finishes the rebuild (no flag needed), and one with the original configuration that
        cancels it (the shards not yet discarded are kept).
        """
        intent = {"from": existing["fingerprint"], "to": self.fingerprint, "started_at": now_iso()}
        self._put(REBUILD_FILE, _dump_json(intent))
        for shard, marker in sorted(self._all_records(COMMITS_DIR).items()):
            if marker.get("dataset_fingerprint") != self.fingerprint:
                self.retire_shard(shard, marker)
        for shard, record in self._all_records(FAILURES_DIR).items():
            if record.get("dataset_fingerprint") != self.fingerprint:
                fsio.remove_files(self.fs, [self._path(FAILURES_DIR, marker_name(shard))])
        plan = load_json_object(fsio.read_optional(self.fs, self._path(PLAN_FILE)))
        if plan is None or plan.get("dataset_fingerprint") != self.fingerprint:
            fsio.remove_files(self.fs, [self._path(PLAN_FILE)])
        elif existing["fingerprint"] == self.fingerprint:
            metadata = metadata | {k: existing.get(k) for k in ("created_at", "plan")}
        self._write_metadata(metadata)
        fsio.remove_files(self.fs, [self._path(REBUILD_FILE)])

    def _refuse_unexplained_state(self) -> None:
        """No metadata: refuse faceshard state that lost it, and any file faceshard did not write.

        The whole tree is checked (not only top-level names): a user's `videos/*.mp4` must never
        be adopted, and so never deleted by a later --rebuild.
        """
        if fsio.list_files(self.fs, self._path(COMMITS_DIR)):
            require_metadata(self.fs, self.root)  # raises: markers without metadata
        foreign = [
            rel
            for rel in (self._relative(p) for p in fsio.list_files(self.fs, self.root))
            if not (rel == METADATA_FILE or rel.startswith(f"{STATE_DIR}/") or is_our_data_file(rel))
        ]
        if foreign:
            raise StorageError(
                f"{self.uri} is not empty and not a faceshard output (found {', '.join(foreign[:5])});"
                " choose an empty or new output path"
            )


def _config_views(config: Mapping[str, Any] | Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(row-affecting dict, full resolved dict) from a BuildConfig or a row-affecting dict."""
    if hasattr(config, "row_affecting"):
        return config.row_affecting(), config.model_dump(mode="json")
    as_json = json.loads(canonical_json(dict(config)))
    return as_json, as_json


def _mismatch_message(
    uri: str, existing: dict[str, Any], config: dict[str, Any], weights: dict[str, Any], fingerprint: str
) -> str:
    old = {
        "schema_version": existing.get("schema_version"),
        **(existing.get("row_affecting") or {}),
        "weights": row_affecting_weights(existing.get("weights") or {}),
    }
    new = {"schema_version": SCHEMA_VERSION, **config, "weights": row_affecting_weights(weights)}
    changes = describe_differences(old, new)
    changes.sort(key=lambda line: not line.startswith("schema_version"))  # a version change first
    shown = "\n".join(f"  {line}" for line in changes[:20])
    if len(changes) > 20:
        shown += f"\n  … {len(changes) - 20} more"
    return (
        f"{uri} was built with another configuration or faceshard version (fingerprint"
        f" {existing['fingerprint']} → {fingerprint}), so its rows would not match: build into a new"
        " output path, or pass --rebuild (rebuild=True) to discard it. What differs:\n"
        f"{shown or '  (differences not derivable)'}"
    )


def _shards_in(paths: str) -> set[int]:
    return {int(m) for m in re.findall(r"/shard=(\d+)/", paths)}


def _marker_paths(marker: Mapping[str, Any], tables: Iterable[str] = TABLES) -> list[str]:
    files = marker.get("files", {})
    return [entry["path"] for name in tables for entry in files.get(name, [])]


def _prepare_tables(plan: ShardPlan, tables: Mapping[str, pa.Table]) -> dict[str, Any]:
    """Check the tables against the plan and split them by `split` into file tables."""
    missing = [name for name in TABLES if name not in tables]
    if missing:
        raise ValueError(f"shard {plan.shard_id}: tables missing: {', '.join(missing)}")
    split_of = {video.video_id: video.split for video in plan.videos}
    videos = tables["videos"]
    ids = videos["video_id"].to_pylist()
    if sorted(ids) != sorted(split_of):
        extra = sorted(set(ids) - set(split_of))
        absent = sorted(set(split_of) - set(ids))
        dups = sorted(v for v, n in Counter(ids).items() if n > 1)
        raise ValueError(
            f"shard {plan.shard_id}: the videos table must hold one row per planned video"
            f" (missing {absent[:5]}, unplanned {extra[:5]}, duplicated {dups[:5]})"
        )
    if "shard" in videos.column_names and any(
        s not in (None, plan.shard_id) for s in videos["shard"].to_pylist()
    ):
        raise ValueError(f"shard {plan.shard_id}: videos rows name another shard")
    prepared: dict[str, Any] = {"videos_status": videos["status"].to_pylist()}
    splits = list(dict.fromkeys(video.split for video in plan.videos))
    for name in TABLES:
        table = tables[name]
        version = schema_version_of(table.schema)
        if version is not None and version != SCHEMA_VERSION:
            raise ValueError(f"{name}: schema version {version}, this faceshard writes {SCHEMA_VERSION}")
        row_ids = table["video_id"].to_pylist()
        unknown = sorted({v for v in row_ids if v not in split_of})
        if unknown:
            raise ValueError(f"shard {plan.shard_id}: {name} rows of unplanned videos {unknown[:5]}")
        row_splits = pa.array([split_of[v] for v in row_ids], pa.string())
        if "split" in table.column_names:
            given = table["split"].combine_chunks().cast(pa.string())
            if pc.sum(pc.not_equal(given, row_splits).cast(pa.int64())).as_py():
                raise ValueError(f"shard {plan.shard_id}: {name}.split disagrees with the plan")
        stored = _without_partitions(table).replace_schema_metadata(
            {
                **(table.schema.metadata or {}),
                SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode(),
                TABLE_KEY: name.encode(),
            }
        )
        prepared[name] = [(split, stored.filter(pc.equal(row_splits, split))) for split in splits]
    return prepared


def _without_partitions(table: pa.Table) -> pa.Table:
    return table.select([c for c in table.column_names if c not in PARTITION_COLUMNS])


def _parquet_bytes(table: pa.Table) -> bytes:
    """One zstd Parquet file, row groups of ~64 MiB uncompressed (one group for typical shards)."""
    rows_per_group = max(1, table.num_rows)
    if table.num_rows and table.nbytes > ROW_GROUP_TARGET_BYTES:
        rows_per_group = max(1024, int(table.num_rows * ROW_GROUP_TARGET_BYTES / table.nbytes))
    scalar = [
        f.name
        for f in table.schema
        if not (pa.types.is_fixed_size_list(f.type) or pa.types.is_binary(f.type))
    ]
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        row_group_size=rows_per_group,
        use_dictionary=[c for c in _DICTIONARY_COLUMNS if c in table.column_names],
        write_statistics=scalar,
    )
    return sink.getvalue().to_pybytes()
