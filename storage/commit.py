"""Writing an output: the `Output` a build holds, and reading its committed state.

Layout under the output root (any fsspec URL):

    _faceshard.json                                  identity, written once: {"format", "layout", "log"}
    _faceshard/log/0000000042.json                   the log: every change, create-if-absent (storage/log.py)
    _faceshard/lease/epoch-00000007.json             the writer's lease (storage/lease.py)
    _faceshard/plan-<attempt>.parquet                a plan's (shard, video_id) rows, named by a log entry
    _faceshard/staging/<attempt>/<table>/...         files of a commit not yet moved into place
    _faceshard/staging/tmp-e000007/                  local atomic-write temporaries of epoch 7
    {videos,faces,identities}/split=<s>/shard=000042/part-<attempt>.parquet
    detections/split=<s>/shard=000042/part-<attempt>.parquet   a side table (storage/schema.py), if any

Commit of one shard (every data file name carries a unique attempt id with the writer's epoch):
  1. each file is written under `_faceshard/staging/<attempt>/` (local: temp file, fsync, rename;
     object stores: one atomic PUT);
  2. the `commit` log entry (the marker: files, rows, sha256, stats) is appended: THE commit
     point, a create-if-absent that a superseded writer's entry loses by construction;
  3. publishing, table by table in PUBLISH_ORDER (`videos` last): the replaced commit's files of
     the table are deleted (collector) and the staged ones moved in (rename locally, server-side
     copy on object stores); then a `published` entry.
A plain `pyarrow.dataset` listing of `{URI}/{table}` therefore only ever sees committed files, and
a shard's `videos` rows only once its faces and identities are in place. A crash before 2 leaves
staging junk (the collector deletes it once its epoch is older than the current one), a crash in 3
a committed-but-unpublished shard: the next `Output.open` rolls it forward.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from faceshard.errors import DamagedOutput, FingerprintMismatch, StorageError
from faceshard.faults import maybe_fault
from faceshard.records import VideoTask
from faceshard.storage import collector, fsio
from faceshard.storage import log as output_log
from faceshard.storage.lease import DEFAULT_TTL_S, Lease, LeaseRef, host_id
from faceshard.storage.log import LogState, Superseded, marker_paths, repair_hint
from faceshard.storage.manifest import ShardPlan
from faceshard.storage.records import (
    DATA_FILE_RE,
    LAYOUT,
    STATE_DIR,
    Identity,
    validate,
)
from faceshard.storage.schema import (
    PARTITION_COLUMNS,
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    SIDE_TABLES,
    TABLE_KEY,
    TABLES,
    schema_version_of,
)

if TYPE_CHECKING:  # planning needs polars; workers importing this module must not
    from faceshard.storage.plan import BuildPlan, PriorPlan

__all__ = ["Output", "OutputState", "Superseded", "locate", "read_files", "read_state"]

METADATA_FILE = "_faceshard.json"
STAGING_DIR = f"{STATE_DIR}/staging"
LEGACY_COMMITS_DIR = f"{STATE_DIR}/commits"  # layout 2 (per-shard markers), see storage/repair.py
PLAN_FORMAT = 3
# Tables in the order a commit moves their files into place: a shard shows up in `videos` (the
# table readers start from) only when its faces, identities and side tables are there already.
PUBLISH_ORDER = (*SIDE_TABLES, "identities", "faces", "videos")
FORMAT = "faceshard"
ROW_GROUP_TARGET_BYTES = 64 << 20
MAX_ERROR_CHARS = 20_000
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


def new_attempt_id(epoch: int) -> str:
    """Sortable and unique: UTC time, the writer's lease epoch, a random suffix.

    A retried shard never reuses a file name, and the collector can tell a dead writer's files (an
    older epoch) from a live one's without trusting listings or clocks.
    """
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-e{epoch:06d}-{uuid.uuid4().hex[:12]}"


def is_our_data_file(relative: str) -> bool:
    """`{table}/split=…/shard=…/part-<attempt>.parquet`: the only data files faceshard writes."""
    return bool(DATA_FILE_RE.match(relative))


def faceshard_version() -> str:
    try:
        return importlib_metadata.version("faceshard")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def data_file_path(table: str, split: str, shard_id: int, attempt: str) -> str:
    """Relative path of one data file; the split is URI-encoded as pyarrow's hive partitioning expects."""
    return f"{table}/split={quote(split, safe='')}/shard={shard_id:06d}/part-{attempt}.parquet"


def _dump_json(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True, default=str).encode()


@dataclass
class OutputState:
    """Everything committed in an output, read once: metadata, plan, visible markers, failures."""

    metadata: dict[str, Any]
    plan: dict[str, Any] | None
    markers: dict[int, dict[str, Any]]
    failures: dict[int, dict[str, Any]]
    log: LogState = field(default_factory=LogState, repr=False)

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


def read_identity(fs: AbstractFileSystem, root: str) -> dict[str, Any] | None:
    """`_faceshard.json`, None when absent; an older layout or an invalid file is a StorageError."""
    path = fsio.join(root, METADATA_FILE)
    data = fsio.read_optional(fs, path)
    if data is None:
        return None
    try:
        legacy = json.loads(data)
    except ValueError:
        legacy = None
    if isinstance(legacy, dict) and legacy.get("format") == FORMAT and "layout" not in legacy:
        raise DamagedOutput(
            f"{root} was written by an older faceshard (per-shard markers under {LEGACY_COMMITS_DIR});"
            f" nothing was changed. Run `faceshard repair {root}` to convert it to the log (it deletes"
            " nothing), then build again."
        )
    identity = validate(Identity, data, path, "output identity", repair_hint(root)).model_dump()
    if identity["layout"] != LAYOUT:
        raise StorageError(
            f"{path}: output layout {identity['layout']}, this faceshard reads layout {LAYOUT}"
        )
    return identity


def is_output(fs: AbstractFileSystem, root: str) -> bool:
    """Whether `root` holds a faceshard output (identity file or log); older layouts raise."""
    return read_identity(fs, root) is not None or output_log.exists(fs, root)


def state_view(log: LogState, root: str) -> OutputState:
    """The committed view of a replayed log: markers that match the dataset (and plan)."""
    if log.metadata is None:
        raise DamagedOutput(
            f"{root}: the output's log holds no metadata (its entries are missing or damaged)."
            f" Nothing was changed. {repair_hint(root)}"
        )
    fingerprint = log.metadata["fingerprint"]
    plan = log.plan if log.plan is not None and log.plan["dataset_fingerprint"] == fingerprint else None
    planned = None if plan is None else {int(s): fp for s, fp, _ in plan["shards"]}

    def visible(record: dict[str, Any]) -> bool:
        return planned is None or planned.get(record["shard"]) == record["fingerprint"]

    markers = {shard: m for shard, m in log.markers.items() if visible(m)}
    failures = {shard: f for shard, f in log.failures.items() if visible(f)}
    return OutputState(log.metadata, plan, markers, failures, log)


def read_state(fs: AbstractFileSystem, root: str) -> OutputState:
    """The committed view of the output at `root` (one replay of its log)."""
    if not is_output(fs, root):
        raise StorageError(f"{root}: not a faceshard output (no {METADATA_FILE})")
    return state_view(output_log.replay(fs, root), root)


def read_metadata(fs: AbstractFileSystem, root: str) -> dict[str, Any] | None:
    """The output's metadata, or None when `root` is no output; damage is a StorageError."""
    if not is_output(fs, root):
        return None
    return read_state(fs, root).metadata


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

    `Output.open` (driver, once per run) takes the output's lease, appends `begin` for its epoch,
    checks the fingerprint and collects what dead writers left; workers receive the pickled object
    (uri, fingerprint, storage options, lease epoch and token) and append their commits to the log
    with that epoch. Leaving a `with` block releases the lease and raises Superseded if another
    build took it over meanwhile (whatever this one wrote after that did not count).
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
        self._log: LogState | None = None  # the replayed log, read on incrementally

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
        lease_heartbeat_s: float | None = None,
        owner: str | None = None,
        warnings: Sequence[str] = (),
    ) -> Output:
        """Take the output's lease, then create or resume the output at `uri` for this configuration.

        `config` is the row-affecting config dict (`BuildConfig.row_affecting()`), or a BuildConfig
        (its full resolved config is then recorded too). Another live build holding the output
        raises OutputBusy naming it (after waiting up to `wait_s`). A different dataset fingerprint
        raises FingerprintMismatch naming the changed keys unless `rebuild`, which switches the
        output to the new fingerprint in one log entry (every shard of the old one is discarded at
        once; their files are collected). Any invalid record is a StorageError: nothing starts.
        `warnings` (each once: the build's, e.g. random weights) are recorded in the metadata.
        """
        row_config, resolved = _config_views(config)
        weights = {name: dict(info) for name, info in weights.items()}
        fingerprint = dataset_fingerprint(row_config, weights)
        out = cls(uri, fingerprint, storage_options)
        fs, root = out.fs, out.root
        fresh = not is_output(fs, root)
        if fresh:
            out._refuse_unexplained_state()  # before the lease: write nothing into a foreign directory
        else:  # the whole log is validated (read afresh) before anything is written, the lease included
            out._log = output_log.shared(fs, root)
            with out._log.lock:
                out._log.reset()
                out._refresh()
            out._check_plan_file()
        held = Lease.acquire(
            fs, root, owner=owner, ttl_s=lease_ttl_s, heartbeat_s=lease_heartbeat_s, wait_s=wait_s, uri=uri
        )
        out._held, out.lease = held, held.ref
        try:
            maybe_fault("step", "lease")
            log = out._refresh()  # an invalid entry stops the build here, before anything is written
            if fresh:
                if log.head == 0:
                    out._refuse_unexplained_state()
                fsio.create_if_absent(
                    fs,
                    fsio.join(root, METADATA_FILE),
                    _dump_json({"format": FORMAT, "layout": LAYOUT, "log": output_log.LOG_DIR}),
                )
            elif read_identity(fs, root) is None:
                raise DamagedOutput(
                    f"{root}: {METADATA_FILE} is missing but the output has a log. {repair_hint(root)}"
                )
            out._append("begin", {"owner": held.record["owner"], "host": host_id(), "pid": os.getpid()})
            existing = log.metadata
            if existing is None and log.markers:
                raise DamagedOutput(f"{root}: the log has commits but no metadata. {repair_hint(root)}")
            metadata = {
                "format": FORMAT,
                "schema_version": SCHEMA_VERSION,
                "fingerprint": fingerprint,
                "created_at": now_iso(),
                "faceshard_version": faceshard_version(),
                "row_affecting": row_config,
                "config": resolved,
                "weights": weights,
                "random_weights": sorted(n for n, w in weights.items() if w.get("random")),
                "warnings": list(dict.fromkeys(warnings)),
            }
            if existing is not None and existing["fingerprint"] != fingerprint:
                if not rebuild:
                    raise FingerprintMismatch(
                        _mismatch_message(uri, existing, row_config, weights, fingerprint)
                    )
                out._refuse_foreign_rows()
            if existing is not None and existing["fingerprint"] == fingerprint:
                metadata["created_at"] = existing["created_at"]
            if existing is None or canonical_json(existing) != canonical_json(metadata):
                out._append("metadata", {"metadata": metadata})
            out._check_plan_file()
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

    def check_not_superseded(self) -> None:
        """Superseded if another build took the output over: nothing written since then counted."""
        if self.lease is None:
            return
        log = self._refresh()
        if log.epoch > self.lease.epoch:
            raise output_log.superseded(self.uri, self.lease.epoch, log)

    def __enter__(self) -> Output:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None:
                self.check_not_superseded()
        finally:
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

    # -- the log

    def _refresh(self) -> LogState:
        """The replayed log, brought up to date (only new entries are read)."""
        if self._log is None:
            if not is_output(self.fs, self.root) and self.lease is None:
                raise StorageError(f"{self.uri}: not a faceshard output (no {METADATA_FILE})")
            self._log = output_log.shared(self.fs, self.root)
        return output_log.refresh(self.fs, self.root, self._log)

    def _append(self, kind: str, payload: dict[str, Any]) -> int:
        """Append one entry with this writer's epoch; Superseded when it lost."""
        if self.lease is None:
            raise StorageError(f"{self.uri}: this writer holds no lease; open the output with Output.open")
        self._refresh()
        assert self._log is not None
        return output_log.append(self.fs, self.root, self._log, self.lease.epoch, kind, payload)

    def _delete(self, paths: Iterable[str], why: str) -> list[str]:
        """Every deletion goes through the collector's one guarded delete."""
        return collector.delete(self.fs, self.root, self._refresh(), paths, why)

    def _check_current(self) -> LogState:
        """Fail fast (not the fence: the log is): superseded, or the output rebuilt meanwhile."""
        log = self._refresh()
        if self.lease is not None and log.epoch > self.lease.epoch:
            raise output_log.superseded(self.uri, self.lease.epoch, log)
        found = (log.metadata or {}).get("fingerprint")
        if found != self.fingerprint:
            raise StorageError(
                f"{self.uri}: the output now has fingerprint {found} (rebuilt while this shard ran?);"
                f" refusing to commit rows of fingerprint {self.fingerprint}"
            )
        return log

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

        An output whose plan was lost (or set aside by `faceshard repair`) has its committed shards
        adopted: their ids are read from their committed `videos` files.
        """
        import polars as pl

        from faceshard.storage.plan import PLAN_SCHEMA, PriorPlan, empty_plan_frame

        state = self.state()
        doc = state.plan
        if doc is not None and doc.get("videos_file"):
            shards = pl.from_arrow(self._read_plan_file(doc["videos_file"])).cast(PLAN_SCHEMA)
            fingerprints = {int(s): fp for s, fp, _ in doc["shards"]}
            shards = shards.filter(pl.col("shard").is_in(list(fingerprints)))
        else:
            parts = [
                self.committed_rows(shard, "videos", ["video_id"]).select(["shard", "video_id"])
                for shard in sorted(state.markers)
            ]
            shards = pl.from_arrow(pa.concat_tables(parts)).cast(PLAN_SCHEMA) if parts else empty_plan_frame()
            fingerprints = {shard: marker["fingerprint"] for shard, marker in state.markers.items()}
        used = [*fingerprints, *state.log.markers, *state.log.failures]
        return PriorPlan(
            shards=shards,
            fingerprints=fingerprints,
            committed=set(state.markers) & set(fingerprints),
            next_shard=max(used, default=-1) + 1,
        )

    def _read_plan_file(self, relative: str) -> pa.Table:
        data = fsio.read_optional(self.fs, self._path(relative))
        problem = "is missing" if data is None else None
        if data is not None:
            try:
                table = pq.read_table(pa.BufferReader(data))
                if table.column_names[:2] != ["shard", "video_id"]:
                    raise ValueError(f"columns {table.column_names}, not shard, video_id")
                return table
            except (pa.ArrowException, ValueError) as exc:
                problem = f"is unreadable ({exc})"
        raise DamagedOutput(
            f"{self.uri}: {relative} (the plan's video ids) {problem}; nothing can be skipped safely."
            f" Nothing was changed. {repair_hint(self.uri)}"
        )

    def _check_plan_file(self) -> None:
        plan = self._refresh().plan
        if plan is not None and plan.get("videos_file"):
            self._read_plan_file(plan["videos_file"])

    def apply_plan(self, plan: BuildPlan) -> None:
        """Record a build's plan and carry out its pruning (the only deletion a plan can cause).

        Order keeps every step safe to crash in: shards pruned whole are retired (one entry each,
        then the files they named are collected); then the plan is written; then shards pruned in
        part are recommitted with their remaining videos' rows (until then the plan shows them
        pending, never twice).
        """
        for shard in plan.prune_drop:
            self.retire_shard(shard, self.marker(shard), "pruned")
        notes = {"not_in_manifest": plan.not_in_manifest, "manifest_videos": plan.videos_total}
        self._write_plan(plan.shards.to_arrow(), plan.fingerprints(self.fingerprint), notes)
        for shard, keep in plan.prune_keep.items():
            self._recommit_without_others(shard, keep)
        # Dropped shards never committed under the plan; a stale marker's files would linger in listings.
        for shard in [*plan.dropped, *plan.prune_drop]:
            self.retire_shard(shard, self.marker(shard), "dropped from the plan")

    def _recommit_without_others(self, shard_id: int, keep: list[str]) -> None:
        """Commit the shard again holding only the rows of `keep` (prune): a new attempt, atomically."""
        marker = self.marker(shard_id)
        if marker is None:
            return
        wanted = pa.array(keep, pa.string())
        tables = {}
        for name in _tables_of(marker):
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
        """The plan's video ids (a new Parquet file) first, then the `plan` entry naming it: one switch.

        Arrow only (no polars): workers and forked writers call `set_plan` too. An unchanged plan
        writes nothing.
        """
        self._check_current()
        shards = shards.select(["shard", "video_id"]).cast(
            pa.schema([("shard", pa.int64()), ("video_id", pa.string())])
        )
        sink = pa.BufferOutputStream()
        pq.write_table(shards, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        counts = {row["values"]: row["counts"] for row in pc.value_counts(shards["shard"]).to_pylist()}
        rows = [[shard, fp, counts.get(shard, 0)] for shard, fp in fingerprints.items()]
        digest = _digest({"rows": rows, "notes": notes, "ids": hashlib.sha256(data).hexdigest()})
        current = self._refresh().plan
        if current is not None and current.get("digest") == digest:
            return
        assert self.lease is not None
        videos_file = f"{STATE_DIR}/plan-{new_attempt_id(self.lease.epoch)}.parquet"
        self._put(videos_file, data)
        plan_doc = {
            "format": PLAN_FORMAT,
            "dataset_fingerprint": self.fingerprint,
            "shards_total": len(fingerprints),
            "videos_total": shards.num_rows,
            "shards": rows,
            "videos_file": videos_file,
            "digest": digest,
            **notes,
        }
        maybe_fault("step", "plan")
        self._append("plan", {"plan": plan_doc})
        if current is not None and current.get("videos_file"):
            self._delete([current["videos_file"]], "replaced plan")

    def metadata(self) -> dict[str, Any]:
        """The output's current metadata."""
        return self.state().metadata

    def state(self) -> OutputState:
        """The committed view (metadata, plan, visible markers, failures)."""
        return state_view(self._refresh(), self.uri)

    def marker(self, shard_id: int) -> dict[str, Any] | None:
        """The shard's current commit (marker) if it belongs to this dataset fingerprint."""
        log = self._refresh()
        marker = log.markers.get(shard_id)
        return marker if marker is not None and marker["dataset_fingerprint"] == self.fingerprint else None

    def is_committed(self, plan: ShardPlan) -> bool:
        """The shard's marker exists and was written for exactly these videos and this fingerprint."""
        marker = self.marker(plan.shard_id)
        return marker is not None and marker.get("fingerprint") == self.shard_fingerprint(plan)

    def pending(self, plans: list[ShardPlan]) -> list[ShardPlan]:
        """The plans not committed yet (one read of the log)."""
        markers = self._refresh().markers
        return [
            plan
            for plan in plans
            if (m := markers.get(plan.shard_id)) is None
            or m["dataset_fingerprint"] != self.fingerprint
            or m["fingerprint"] != self.shard_fingerprint(plan)
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
        """The committed rows of one shard's table (or side table), with `split` and `shard` columns."""
        if table not in (*TABLES, *SIDE_TABLES):
            raise ValueError(f"unknown table {table!r}; one of {', '.join((*TABLES, *SIDE_TABLES))}")
        marker = self.marker(shard_id)
        if marker is None:
            raise StorageError(f"{self.uri}: shard {shard_id} is not committed")
        entries = [file_entry(marker, entry) for entry in marker["files"].get(table, [])]
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
        """Stage the shard's three tables, append its `commit` entry (the commit point), publish.

        `tables` are the logical tables of `storage.schema` (partition columns included or not), and
        any side tables (`SIDE_TABLES`), committed with them in the same entry.
        The videos table must hold exactly one row per planned video. Files of a previous commit
        of this shard are deleted (collector) once the new commit is in the log.
        """
        shard_fp = self.shard_fingerprint(plan)
        maybe_fault("step", "check")
        self._check_current()
        assert self.lease is not None
        prepared = _prepare_tables(plan, tables)
        attempt = new_attempt_id(self.lease.epoch)
        staging = f"{STAGING_DIR}/{attempt}"
        names = _tables_of(tables)
        files: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        total_bytes = 0
        maybe_fault("step", "data")
        for name in names:
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
            "epoch": self.lease.epoch,
            "committed_at": now_iso(),
            "published": False,
            "staging": staging,
            "files": files,
            "rows": {name: sum(f["rows"] for f in files[name]) for name in names},
            "bytes": total_bytes,
            "status_counts": dict(Counter(prepared["videos_status"])),
            "stats": json.loads(canonical_json(dict(stats or {}))),
            "history": json.loads(canonical_json(history[-10:])),
        }
        maybe_fault("step", "commit")
        self._append("commit", {"marker": marker})  # THE commit point
        return self._publish(marker, previous)

    def replace_videos(
        self, plan: ShardPlan, tables: Mapping[str, pa.Table], stats: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Commit a shard in which the videos of `tables["videos"]` were reprocessed (retry-failed).

        Their committed rows (in every table, side tables too) are replaced by the new ones, every other
        video's rows are kept; the result is committed atomically as a new attempt and the
        superseded files are deleted.
        """
        replaced = pa.array(sorted(set(tables["videos"]["video_id"].to_pylist())), pa.string())
        order = {video.video_id: i for i, video in enumerate(plan.videos)}
        committed = _tables_of(self.marker(plan.shard_id) or {"files": {}})
        merged: dict[str, pa.Table] = {}
        for name in dict.fromkeys([*committed, *_tables_of(tables)]):  # a side table of either
            parts = [_without_partitions(tables[name])] if name in tables else []
            if name in committed:
                old = _without_partitions(self.committed_rows(plan.shard_id, name))
                kept = old.filter(pc.invert(pc.is_in(old["video_id"], value_set=replaced)))
                parts = [kept, *(part.select(kept.column_names).cast(kept.schema) for part in parts)]
            combined = pa.concat_tables(parts)
            # Back into manifest order (stable within a video) so a retried shard reads like a fresh one.
            rank = [order[v] for v in combined["video_id"].to_pylist()]
            merged[name] = combined.take(pa.array(sorted(range(len(rank)), key=rank.__getitem__), pa.int64()))
        return self.commit_shard(plan, merged, stats)

    def record_failure(self, plan: ShardPlan, error: str) -> None:
        """Record that the shard's whole task failed; status counts it failed until it commits."""
        self._check_current()
        text = error if len(error) <= MAX_ERROR_CHARS else error[:MAX_ERROR_CHARS] + " …(truncated)"
        record = {
            "shard": plan.shard_id,
            "fingerprint": self.shard_fingerprint(plan),
            "dataset_fingerprint": self.fingerprint,
            "error": text,
            "videos": len(plan.videos),
            "at": now_iso(),
        }
        self._append("failure", {"failure": record})

    # -- maintenance

    def cleanup(self) -> dict[str, int]:
        """Collect what is dead, then roll interrupted publishing forward.

        The collector deletes only faceshard-named files that no winning record names and that no
        live lease can still write (see storage/collector.py); released files go before any
        roll-forward moves files in, so an interrupted replacement's old files vanish before its
        new ones appear and a listing never sees a video twice.
        """
        self._check_current()
        removed = collector.collect(self.fs, self.root, self._refresh())
        rolled_forward = 0
        for shard, marker in sorted(self._refresh().markers.items()):
            if not marker["published"]:
                try:
                    self._publish(marker, None)
                except FileNotFoundError as exc:
                    raise DamagedOutput(
                        f"{self.uri}: shard {shard} is committed but its file is missing ({exc}; checked"
                        f" directly, not by listing). Nothing was deleted. {repair_hint(self.root)}"
                    ) from None
                rolled_forward += 1
        return {
            "orphan_files": sum(1 for p in removed if is_our_data_file(p)),
            "rolled_forward": rolled_forward,
            "staging_removed": sum(1 for p in removed if p.startswith(f"{STAGING_DIR}/")),
            "removed": len(removed),
        }

    def retire_shard(self, shard_id: int, marker: Mapping[str, Any] | None, reason: str = "retired") -> None:
        """Un-commit one shard (--prune, a shard dropped from the plan): one `retire` entry (status and
        readers drop it at once), then the collector deletes exactly the files that marker named,
        `videos` first (plain hive readers drop it next). A shard with only a failure loses that."""
        log = self._refresh()
        if marker is None and shard_id not in log.failures:
            return
        self._append("retire", {"shard": shard_id, "reason": reason})
        if marker is not None:
            paths = marker_paths(dict(marker), tuple(reversed(PUBLISH_ORDER)))
            staging = [marker["staging"]] if marker.get("staging") else []
            self._delete([*paths, *staging], f"shard {shard_id} {reason}")

    # -- internals

    def _path(self, *parts: str) -> str:
        return fsio.join(self.root, *parts)

    def _relative(self, path: str) -> str:
        return path[len(self.root) + 1 :] if path.startswith(self.root + "/") else path

    def _put(self, relative: str, data: bytes) -> None:
        assert self.lease is not None
        fsio.put_bytes(
            self.fs, self._path(relative), data, self._path(f"{STAGING_DIR}/tmp-e{self.lease.epoch:06d}")
        )

    def _publish(self, marker: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
        """Step 3 of a commit (idempotent, so `cleanup` can roll it forward after a crash).

        Table by table in PUBLISH_ORDER, `videos` last: a plain listing of `videos` shows the shard
        only once its faces and identities are in place. A replacement (retry-failed) first takes
        the superseded `videos` files away, then swaps each table's files (old out, then new in),
        so a reader starting from `videos` sees the old shard, no shard, or the new shard, never a
        mix, and no table ever holds a video twice. A commit no longer current (replaced or retired
        since, by anyone) publishes nothing.
        """
        shard = marker["shard"]
        current = self._refresh().markers.get(shard)
        if current is None or current["attempt"] != marker["attempt"]:
            return current or marker
        keep = set(marker_paths(marker))
        old = {} if previous is None else {name: marker_paths(previous, (name,)) for name in PUBLISH_ORDER}
        self._delete([p for p in old.get("videos", []) if p not in keep], f"shard {shard} replaced")
        for name in PUBLISH_ORDER:
            self._delete([p for p in old.get(name, []) if p not in keep], f"shard {shard} replaced")
            maybe_fault("step", "publish")
            for entry in marker["files"].get(name, []):
                try:
                    self._move_into_place(f"{marker['staging']}/{entry['path']}", entry["path"])
                except FileNotFoundError:
                    self.check_not_superseded()  # the new holder took it from here: say so
                    raise
        self._append("published", {"shard": shard, "attempt": marker["attempt"]})
        garbage = [marker["staging"]]
        if previous is not None and previous.get("staging") and not previous.get("published", True):
            garbage.append(previous["staging"])
        self._delete(garbage, f"shard {shard} published")
        return {k: v for k, v in marker.items() if k != "staging"} | {"published": True}

    def _move_into_place(self, staged: str, final: str) -> None:
        """Rename (local) or server-side copy and removal of the staged copy (object stores); done
        already is fine. Not a deletion: the content lives on at its final path."""
        fs, src, dst = self.fs, self._path(staged), self._path(final)
        if fsio.is_local(fs):
            try:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.replace(src, dst)
            except FileNotFoundError:  # moved already (a roll-forward by the next holder)
                if not os.path.exists(dst):
                    raise FileNotFoundError(f"committed file lost before publishing: {src}") from None
            return
        try:
            fsio.retrying(fs.copy, src, dst)
        except FileNotFoundError:
            if not fsio.retrying(fs.exists, dst):
                raise FileNotFoundError(f"committed file lost before publishing: {src}") from None
        fsio.remove_files(fs, [src])

    def _refuse_foreign_rows(self) -> None:
        """--rebuild never deletes a file faceshard did not write; a Parquet file of someone else's
        inside a table folder would be read as rows beside the rebuilt ones, so it refuses."""
        foreign = [
            rel
            for name in (*TABLES, *SIDE_TABLES)
            for rel in (self._relative(p) for p in fsio.list_files(self.fs, self._path(name)))
            if rel.endswith(".parquet") and not is_our_data_file(rel)
        ]
        if foreign:
            raise StorageError(
                f"{self.uri}: refusing --rebuild: these files in the table folders are not faceshard's and"
                f" would be read as rows beside the rebuilt ones: {', '.join(foreign[:10])}. faceshard never"
                " deletes them: move them out of the output, then run again. Nothing was changed."
            )

    def _refuse_unexplained_state(self) -> None:
        """No output here: refuse any file faceshard did not write.

        The whole tree is checked (not only top-level names): a user's `videos/*.mp4` must never
        be adopted into an output.
        """
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
    for name in _tables_of(tables):
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


def _tables_of(given: Mapping[str, Any]) -> list[str]:
    """The tables a commit holds (or a marker names): the row tables, then the side tables present."""
    files = given.get("files", given)
    return [*TABLES, *(name for name in SIDE_TABLES if name in files)]


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
        if not (pa.types.is_fixed_size_list(f.type) or pa.types.is_binary(f.type) or pa.types.is_list(f.type))
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
