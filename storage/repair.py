"""`faceshard repair URI`: make a damaged output consistent again, and say what was done and what is left.

Under the output's lease (an unreadable lease record is taken over once it has been seen unchanged
for the TTL), in this order:
- an output of the older layout (per-shard markers under `_faceshard/commits`) is converted: its
  metadata and every valid marker become log entries (nothing is deleted);
- a missing or invalid `_faceshard.json` is written again;
- an unreadable log entry (truncated, a wrong-typed or missing field, a path outside the output)
  is replaced by a `void` entry; a commit among them is rebuilt from the attempt's files when its
  shard, attempt and fingerprints can still be read (rows, bytes, sha256 from the files
  themselves), otherwise its shard is left for the next build to redo;
- a log without metadata gets it back from its commits' dataset fingerprint;
- a plan whose video-id Parquet is missing or unreadable is set aside (the next build re-plans,
  adopting the committed shards from their own files);
- a commit naming a file that does not exist (checked directly, not by listing) is retired: the
  next build redoes that shard;
- finally the collector removes what no record names any more (faceshard's names only).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq

from faceshard.errors import StorageError
from faceshard.storage import collector, fsio
from faceshard.storage import log as output_log
from faceshard.storage.commit import (
    FORMAT,
    LEGACY_COMMITS_DIR,
    METADATA_FILE,
    TABLES,
    _dump_json,
    faceshard_version,
    now_iso,
)
from faceshard.storage.lease import DEFAULT_TTL_S, Lease, host_id
from faceshard.storage.records import ATTEMPT_RE, DATA_FILE_RE, LAYOUT, Identity, Marker, Metadata
from faceshard.storage.schema import SCHEMA_VERSION, SIDE_TABLES


def repair_output(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    wait_s: float = 0.0,
    lease_ttl_s: float = DEFAULT_TTL_S,
) -> dict[str, Any]:
    """Repair the output at `uri`; returns {"actions": [...], "left": [...]} (what the user must do)."""
    fs, root = fsio.open_fs(uri, storage_options)
    if fsio.read_optional(fs, fsio.join(root, METADATA_FILE)) is None and not output_log.exists(fs, root):
        # refused before the lease: a folder that is no output gets nothing written into it
        raise StorageError(f"{uri}: not a faceshard output (no {METADATA_FILE}, no log); nothing to repair")
    held = Lease.acquire(fs, root, ttl_s=lease_ttl_s, wait_s=wait_s, uri=uri, unreadable_ok=True)
    repair = _Repair(fs, root, held.ref.epoch)
    if held.took_over is None and _was_unreadable(fs, root, held.ref.epoch - 1):
        repair.actions.append(f"took over the output's unreadable lease record (epoch {held.ref.epoch - 1})")
    try:
        repair.run()
    finally:
        held.release()
    return {"actions": repair.actions, "left": repair.left}


def _was_unreadable(fs: Any, root: str, epoch: int) -> bool:
    if epoch < 1:
        return False
    from faceshard.storage.lease import read_record

    try:
        read_record(fs, root, epoch)
    except (StorageError, FileNotFoundError):
        return True
    return False


class _Repair:
    def __init__(self, fs: Any, root: str, epoch: int) -> None:
        self.fs, self.root, self.epoch = fs, root, epoch
        self.actions: list[str] = []
        self.left: list[str] = []
        self.log = output_log.LogState()
        self.quarantine = f"_faceshard/quarantine/{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"

    def run(self) -> None:
        self._identity()
        self._append("begin", {"owner": "faceshard repair", "host": host_id(), "pid": 0})
        self._void_unreadable()
        self._metadata()
        self._plan()
        self._missing_files()
        self._set_aside_unreferenced()
        removed = collector.collect(self.fs, self.root, self._refresh())
        if removed:
            self.actions.append(
                f"collected {len(removed)} file(s) of faceshard's that no record names any more"
            )

    # -- steps

    def _identity(self) -> None:
        path = fsio.join(self.root, METADATA_FILE)
        data = fsio.read_optional(self.fs, path)
        legacy = _json(data)
        if isinstance(legacy, dict) and legacy.get("format") == FORMAT and "layout" not in legacy:
            self._convert_legacy(legacy)
        elif data is None and not output_log.exists(self.fs, self.root):
            raise StorageError(
                f"{self.root}: not a faceshard output (no {METADATA_FILE}, no log); nothing to repair"
            )
        elif data is None or not _valid(Identity, data):
            self._write_identity()
            self.actions.append(
                f"{'wrote the missing' if data is None else 'rewrote the invalid'} {METADATA_FILE}"
            )

    def _write_identity(self) -> None:
        fsio.put_bytes(
            self.fs,
            fsio.join(self.root, METADATA_FILE),
            _dump_json({"format": FORMAT, "layout": LAYOUT, "log": output_log.LOG_DIR}),
            fsio.join(self.root, f"_faceshard/staging/tmp-e{self.epoch:06d}"),
        )

    def _convert_legacy(self, legacy: dict[str, Any]) -> None:
        """Layout 2 → the log: metadata, then each valid marker as a published commit."""
        if output_log.exists(self.fs, self.root):
            raise StorageError(f"{self.root}: an older layout's metadata beside a log; restore one of them")
        self._append("begin", {"owner": "faceshard repair", "host": host_id(), "pid": 0})
        metadata = _metadata_doc(legacy.get("fingerprint"), legacy)
        self._append("metadata", {"metadata": metadata})
        paths = fsio.list_files(self.fs, fsio.join(self.root, LEGACY_COMMITS_DIR))
        converted = 0
        for path, data in sorted(fsio.read_many(self.fs, paths).items()):
            record = _json(data)
            if isinstance(record, dict):
                record = {**record, "published": True, "staging": None, "epoch": record.get("epoch") or 1}
            if isinstance(record, dict) and _valid(Marker, json.dumps(record).encode()):
                self._append("commit", {"marker": record})
                self._append("published", {"shard": record["shard"], "attempt": record["attempt"]})
                converted += 1
            else:
                self.left.append(
                    f"{path}: an older marker that does not validate was not converted (its shard is redone)"
                )
        self._write_identity()
        self.actions.append(
            f"converted the older layout to the log ({converted} committed shards); the old files under"
            f" {LEGACY_COMMITS_DIR} are left in place (faceshard no longer reads them)"
        )

    def _void_unreadable(self) -> None:
        state = output_log.replay(self.fs, self.root, tolerant=True)
        for problem in state.problems:
            raw = fsio.read_optional(self.fs, problem.path)
            salvaged = self._salvage_commit(raw)
            void = {
                "seq": problem.seq,
                "epoch": 0,
                "kind": "void",
                "at": now_iso(),
                "reason": problem.message[:2000],
            }
            fsio.put_bytes(
                self.fs,
                problem.path,
                _dump_json(void),
                fsio.join(self.root, f"_faceshard/staging/tmp-e{self.epoch:06d}"),
            )
            what = f"log entry {problem.seq}" + (
                f" (shard {problem.shard})" if problem.shard is not None else ""
            )
            self.actions.append(f"{what} was unreadable ({problem.message}); replaced it by a void entry")
            if salvaged:
                self.actions.append(f"shard {salvaged}: rebuilt its commit from the attempt's own files")
            elif problem.shard is not None:
                self.left.append(f"shard {problem.shard}: its record was lost; the next build redoes it")

    def _salvage_commit(self, raw: bytes | None) -> int | None:
        """A damaged commit entry whose shard, attempt and fingerprints still read: re-commit it from
        the attempt's files (footer row counts, sizes, sha256). None when that is not possible."""
        entry = _json(raw)
        marker = entry.get("marker") if isinstance(entry, dict) and entry.get("kind") == "commit" else None
        if not isinstance(marker, dict):
            return None
        shard, attempt = marker.get("shard"), marker.get("attempt")
        fingerprints = (marker.get("fingerprint"), marker.get("dataset_fingerprint"))
        if not (isinstance(shard, int) and isinstance(attempt, str) and ATTEMPT_RE.match(attempt)):
            return None
        if not all(isinstance(fp, str) for fp in fingerprints):
            return None
        files: dict[str, list[dict[str, Any]]] = {name: [] for name in (*TABLES, *SIDE_TABLES)}
        status: Counter[str] = Counter()
        for name in files:
            for path in fsio.list_files(self.fs, fsio.join(self.root, name)):
                relative = path[len(self.root) + 1 :]
                match = DATA_FILE_RE.match(relative)
                if not match or int(match.group(2)) != shard or match.group(3) != attempt:
                    continue
                data = fsio.read_bytes(self.fs, path)
                table = pq.read_table(fsio_buffer(data))
                split = unquote(relative.split("/")[1][len("split=") :])
                files[name].append(
                    {
                        "path": relative,
                        "split": split,
                        "rows": table.num_rows,
                        "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                )
                if name == "videos":
                    status.update(table["status"].to_pylist())
        if not files["videos"]:
            return None
        files = {name: entries for name, entries in files.items() if name in TABLES or entries}
        repaired = {
            "shard": shard,
            "fingerprint": fingerprints[0],
            "dataset_fingerprint": fingerprints[1],
            "attempt": attempt,
            "epoch": int(ATTEMPT_RE.match(attempt).group(1)),  # type: ignore[union-attr]
            "committed_at": now_iso(),
            "published": True,
            "staging": None,
            "files": files,
            "rows": {name: sum(f["rows"] for f in entries) for name, entries in files.items()},
            "bytes": sum(f["bytes"] for entries in files.values() for f in entries),
            "status_counts": dict(status),
            "stats": {"repaired": True},
            "history": [],
        }
        if not _valid(Marker, json.dumps(repaired).encode()):
            return None
        self._append("commit", {"marker": repaired})
        self._append("published", {"shard": shard, "attempt": attempt})
        return shard

    def _metadata(self) -> None:
        log = self._refresh()
        if log.metadata is not None:
            return
        fingerprints = Counter(m["dataset_fingerprint"] for m in log.markers.values())
        if len(fingerprints) != 1:
            self.left.append(
                "the output's metadata is lost and its commits name"
                f" {len(fingerprints)} dataset fingerprints: build with --rebuild or use a new output"
            )
            return
        (fingerprint,) = fingerprints
        self._append("metadata", {"metadata": _metadata_doc(fingerprint, {})})
        self.actions.append(
            f"rebuilt the metadata from the commits (fingerprint {fingerprint}); build with the original"
            " configuration to resume"
        )

    def _plan(self) -> None:
        plan = self._refresh().plan
        if plan is None or not plan.get("videos_file"):
            return
        data = fsio.read_optional(self.fs, fsio.join(self.root, plan["videos_file"]))
        problem = "missing" if data is None else None
        if data is not None:
            try:
                pq.read_table(fsio_buffer(data))
            except Exception as exc:  # any unreadable Parquet
                problem = f"unreadable ({type(exc).__name__})"
        if problem:
            self._append("plan", {"plan": None})
            self.actions.append(
                f"the plan's video ids {plan['videos_file']} were {problem}: set the plan aside; the next"
                " build plans again, adopting the committed shards from their own files"
            )

    def _missing_files(self) -> None:
        for shard, marker in sorted(self._refresh().markers.items()):
            missing = [
                entry["path"]
                for entries in marker["files"].values()
                for entry in entries
                if not fsio.retrying(self.fs.exists, fsio.join(self.root, entry["path"]))
                and not (
                    marker.get("staging")
                    and fsio.retrying(
                        self.fs.exists, fsio.join(self.root, f"{marker['staging']}/{entry['path']}")
                    )
                )
            ]
            if missing:
                self._append("retire", {"shard": shard, "reason": "repair: committed files missing"})
                self.actions.append(
                    f"shard {shard}: committed files missing ({', '.join(missing[:3])}); retired it"
                )
                self.left.append(f"shard {shard}: the next build redoes it")

    def _set_aside_unreferenced(self) -> None:
        """Data files no record names (a lost record's, a retired shard's remains) are moved under
        `_faceshard/quarantine/<time>/` for the user to inspect, not deleted: a record was damaged,
        so what its files held is the user's call."""
        log = self._refresh()
        referenced = log.referenced()
        moved = []
        for relative in collector.candidates(self.fs, self.root):
            if DATA_FILE_RE.match(relative) and relative not in referenced:
                target = fsio.join(self.root, self.quarantine, relative)
                fsio.retrying(self.fs.makedirs, target.rsplit("/", 1)[0], exist_ok=True)
                fsio.retrying(self.fs.mv, fsio.join(self.root, relative), target)
                moved.append(relative)
        if moved:
            self.actions.append(
                f"set aside {len(moved)} data file(s) no record names under {self.quarantine}"
            )
            self.left.append(f"{self.quarantine}: inspect or delete it yourself (faceshard never does)")

    # -- helpers

    def _refresh(self) -> output_log.LogState:
        return output_log.refresh(self.fs, self.root, self.log, tolerant=True)

    def _append(self, kind: str, payload: dict[str, Any]) -> None:
        self._refresh()
        output_log.append(self.fs, self.root, self.log, self.epoch, kind, payload)


def fsio_buffer(data: bytes) -> pa.BufferReader:
    return pa.BufferReader(data)


def _metadata_doc(fingerprint: Any, legacy: dict[str, Any]) -> dict[str, Any]:
    doc = {
        "format": FORMAT,
        "schema_version": legacy.get("schema_version")
        if isinstance(legacy.get("schema_version"), int)
        else SCHEMA_VERSION,
        "fingerprint": str(fingerprint),
        "created_at": str(legacy.get("created_at") or now_iso()),
        "faceshard_version": str(legacy.get("faceshard_version") or faceshard_version()),
        "row_affecting": legacy.get("row_affecting")
        if isinstance(legacy.get("row_affecting"), dict)
        else None,
        "config": legacy.get("config") if isinstance(legacy.get("config"), dict) else None,
        "weights": legacy.get("weights") if isinstance(legacy.get("weights"), dict) else {},
        "random_weights": [str(w) for w in legacy.get("random_weights") or []],
        "reconstructed": not legacy,
    }
    Metadata.model_validate_json(json.dumps(doc))
    return doc


def _json(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _valid(model: Any, data: bytes) -> bool:
    try:
        model.model_validate_json(data)
    except ValueError:
        return False
    return True
