"""`faceshard repair URI`: make an output with damaged metadata usable again, deleting nothing.

What cannot be read is set aside under `_faceshard/quarantine/<time>/` (same relative paths),
never deleted:
- `_faceshard.json` unreadable or missing: restored from `_faceshard/metadata.backup.json`, or,
  without a usable backup, rebuilt from the commit markers' dataset fingerprint (the next build
  with the original configuration then matches it and rewrites the full metadata);
- an unreadable plan or rebuild record: set aside (both are derived; the next build rewrites them);
- an unreadable commit marker or failure record: set aside together with that shard's data files,
  so the shard is pending again and no half-known files stay visible to hive readers;
- a commit marker naming a file that does not exist (checked directly, not by listing): set aside
  with the shard's remaining files; the next build redoes the shard.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from typing import Any

from faceshard.errors import StorageError
from faceshard.storage import fsio
from faceshard.storage.commit import (
    COMMITS_DIR,
    FAILURES_DIR,
    FORMAT,
    METADATA_BACKUP,
    METADATA_FILE,
    PLAN_FILE,
    REBUILD_FILE,
    STATE_DIR,
    TABLES,
    is_our_data_file,
    load_json_object,
    now_iso,
)
from faceshard.storage.lease import Lease
from faceshard.storage.schema import SCHEMA_VERSION

QUARANTINE_DIR = f"{STATE_DIR}/quarantine"


def repair_output(
    uri: str, storage_options: dict[str, Any] | None = None, wait_s: float = 0.0
) -> dict[str, Any]:
    """Repair the output at `uri` under its lease; returns {"actions": [...], "quarantine": dir}."""
    fs, root = fsio.open_fs(uri, storage_options)
    ours = [fsio.join(root, METADATA_FILE), fsio.join(root, METADATA_BACKUP)]
    if not any(fs.exists(path) for path in ours) and not fsio.list_files(fs, fsio.join(root, STATE_DIR)):
        raise StorageError(
            f"{uri}: not a faceshard output (no {METADATA_FILE}, no {STATE_DIR}/): nothing to repair;"
            " check the path (nothing was written there)"
        )
    repair = _Repair(fs, root)
    held = Lease.acquire(fs, root, owner=None, wait_s=wait_s, uri=uri)
    try:
        repair.run()
    finally:
        held.release()
    return {"actions": repair.actions, "quarantine": repair.quarantine if repair.actions else None}


class _Repair:
    def __init__(self, fs: Any, root: str) -> None:
        self.fs, self.root = fs, root
        self.quarantine = f"{QUARANTINE_DIR}/{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
        self.actions: list[str] = []

    def run(self) -> None:
        markers = self._records(COMMITS_DIR, "commit marker")
        self._records(FAILURES_DIR, "failure record")
        self._metadata(markers)
        for relative, what in ((PLAN_FILE, "plan"), (REBUILD_FILE, "rebuild record")):
            data = fsio.read_optional(self.fs, self._path(relative))
            if data is not None and load_json_object(data) is None:
                self._set_aside(relative)
                self.actions.append(
                    f"set aside the unreadable {what} {relative} (the next build rewrites it)"
                )
        for shard, marker in sorted(markers.items()):
            missing = [
                entry["path"]
                for entries in marker.get("files", {}).values()
                for entry in entries
                if not fsio.retrying(self.fs.exists, self._path(entry["path"]))
                and not (
                    marker.get("staging")
                    and fsio.retrying(self.fs.exists, self._path(f"{marker['staging']}/{entry['path']}"))
                )
            ]
            if missing:
                self._set_aside_shard(shard)
                self.actions.append(
                    f"shard {shard}: committed files missing ({', '.join(missing[:3])}); set aside its marker"
                    " and remaining files, the next build redoes it"
                )

    def _records(self, directory: str, what: str) -> dict[int, dict[str, Any]]:
        """Readable records by shard; unreadable ones are set aside (markers with their shard's files)."""
        out: dict[int, dict[str, Any]] = {}
        for path in fsio.list_files(self.fs, self._path(directory)):
            name = path.rsplit("/", 1)[-1]
            if not (name.startswith("shard-") and name.endswith(".json")):
                continue
            shard = int(name[len("shard-") : -len(".json")])
            record = load_json_object(fsio.read_optional(self.fs, path))
            if record is not None:
                out[shard] = record
                continue
            if directory == COMMITS_DIR:
                self._set_aside_shard(shard)
            else:
                self._set_aside(f"{directory}/{name}")
            self.actions.append(f"shard {shard}: set aside the unreadable {what} {directory}/{name}")
        return out

    def _metadata(self, markers: dict[int, dict[str, Any]]) -> None:
        data = fsio.read_optional(self.fs, self._path(METADATA_FILE))
        if data is not None and _is_metadata(load_json_object(data)):
            return
        if data is not None:
            self._set_aside(METADATA_FILE)
        backup = load_json_object(fsio.read_optional(self.fs, self._path(METADATA_BACKUP)))
        fingerprints = Counter(m.get("dataset_fingerprint") for m in markers.values())
        if _is_metadata(backup) and (not fingerprints or backup["fingerprint"] in fingerprints):
            self._put(METADATA_FILE, json.dumps(backup, indent=1, sort_keys=True).encode())
            self.actions.append(f"restored {METADATA_FILE} from {METADATA_BACKUP}")
            return
        if len(fingerprints) != 1:
            raise StorageError(
                f"{self.root}: {METADATA_FILE} is damaged, its backup is unusable and the commit markers name"
                f" {len(fingerprints)} dataset fingerprints; cannot tell which one the output holds."
                " Nothing was deleted; restore the file from a backup or start a new output"
            )
        (fingerprint,) = fingerprints
        rebuilt = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "fingerprint": fingerprint,
            "created_at": now_iso(),
            "opened_at": None,
            "reconstructed": True,
            "row_affecting": None,
            "config": None,
            "weights": {},
            "random_weights": [],
            "plan": None,
        }
        self._put(METADATA_FILE, json.dumps(rebuilt, indent=1, sort_keys=True).encode())
        self.actions.append(
            f"rebuilt {METADATA_FILE} from the commit markers (fingerprint {fingerprint}); build with the"
            " original configuration to resume"
        )

    def _set_aside_shard(self, shard: int) -> None:
        """The shard's marker and every data file of ours under its partition directories."""
        for name in TABLES:
            for path in fsio.list_files(self.fs, self._path(name)):
                relative = path[len(self.root) + 1 :]
                if is_our_data_file(relative) and f"/shard={shard:06d}/" in relative:
                    self._set_aside(relative)
        self._set_aside(f"{COMMITS_DIR}/shard-{shard:06d}.json")

    def _set_aside(self, relative: str) -> None:
        """Copy into the quarantine, then remove the original: interrupted, both copies remain."""
        source = self._path(relative)
        data = fsio.read_optional(self.fs, source)
        if data is None:
            return
        self._put(f"{self.quarantine}/{relative}", data)
        fsio.remove_files(self.fs, [source])

    def _put(self, relative: str, data: bytes) -> None:
        fsio.put_bytes(self.fs, self._path(relative), data, self._path(f"{STATE_DIR}/staging/tmp-repair"))

    def _path(self, relative: str) -> str:
        return fsio.join(self.root, relative)


def _is_metadata(value: dict[str, Any] | None) -> bool:
    return value is not None and value.get("format") == FORMAT and isinstance(value.get("fingerprint"), str)
