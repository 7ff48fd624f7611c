"""Every record faceshard keeps in an output, as pydantic models validated on every read.

A record that does not validate is a StorageError naming the file and the field (never a bare
KeyError later), and every path a record names must be one faceshard writes, relative to the output
root: `../victim.txt`, an absolute path or a user's `part-0.parquet` never get past `validate`.

Names faceshard writes (nothing else is ever deleted, see storage/collector.py):
    {table}/split=<s>/shard=<NNNNNN>/part-<attempt>.parquet   data files (row tables and side tables)
    _faceshard/staging/<attempt>/...                           a commit's files before publishing
    _faceshard/staging/tmp-e<epoch>/...                        local atomic-write temporaries
    _faceshard/plan-<attempt>.parquet                          a plan's (shard, video_id) rows
    _faceshard/lease/epoch-<NNNNNNNN>.json                     lease records (storage/lease.py)
    _faceshard/log/<NNNNNNNNNN>.json                           the log (storage/log.py), never deleted
where <attempt> is `YYYYmmddTHHMMSS-e<epoch>-<12 hex>`: unique, and carrying its writer's epoch.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from faceshard.errors import DamagedOutput

STATE_DIR = "_faceshard"
TABLE_NAMES = ("videos", "faces", "identities")  # every commit holds these
SIDE_TABLE_NAMES = ("detections",)  # a commit may hold these (older ones do not): never read as rows
ATTEMPT = r"\d{8}T\d{6}-e(\d{6,})-[0-9a-f]{12}"
ATTEMPT_RE = re.compile(rf"^{ATTEMPT}$")
DATA_FILE_RE = re.compile(
    rf"^(videos|faces|identities|detections)/split=[^/]+/shard=(\d{{6,}})/part-({ATTEMPT})\.parquet$"
)
STAGING_ENTRY_RE = re.compile(rf"^{STATE_DIR}/staging/(?:({ATTEMPT})|tmp-e(\d{{6,}}))$")
PLAN_FILE_RE = re.compile(rf"^{STATE_DIR}/plan-({ATTEMPT})\.parquet$")
LEASE_FILE_RE = re.compile(rf"^{STATE_DIR}/lease/epoch-(\d{{8,}})\.json$")
LAYOUT = 3  # 2: per-shard markers under _faceshard/commits (faceshard before the log)


class Record(BaseModel):
    """Strict: a wrong-typed field is an error, not a coercion; unknown fields are kept."""

    model_config = ConfigDict(strict=True, extra="allow")


class FileEntry(Record):
    path: str
    split: str
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _ours(self) -> FileEntry:
        if not DATA_FILE_RE.match(self.path):
            raise ValueError(f"path {self.path!r} is not a faceshard data file name under the output")
        return self


class Marker(Record):
    """A commit of one shard: exactly which files hold its rows."""

    shard: int = Field(ge=0)
    fingerprint: str
    dataset_fingerprint: str
    attempt: str = Field(pattern=ATTEMPT_RE.pattern)
    epoch: int = Field(ge=1)
    committed_at: str
    published: bool
    staging: str | None = None
    files: dict[Literal["videos", "faces", "identities", "detections"], list[FileEntry]]
    rows: dict[str, int]
    bytes: int = Field(ge=0)
    status_counts: dict[str, int]
    stats: dict[str, Any]
    history: list[dict[str, Any]] = []

    @model_validator(mode="after")
    def _consistent(self) -> Marker:
        if not set(TABLE_NAMES) <= set(self.files):
            raise ValueError(f"files must list {', '.join(TABLE_NAMES)}")
        if self.staging is not None and self.staging != f"{STATE_DIR}/staging/{self.attempt}":
            raise ValueError(f"staging {self.staging!r} is not this attempt's staging folder")
        for table, entries in self.files.items():
            for entry in entries:
                match = DATA_FILE_RE.match(entry.path)
                assert match is not None  # FileEntry checked it
                if (match.group(1), int(match.group(2)), match.group(3)) != (table, self.shard, self.attempt):
                    raise ValueError(
                        f"file {entry.path!r} is not shard {self.shard}'s {table} of {self.attempt}"
                    )
        return self


class Failure(Record):
    shard: int = Field(ge=0)
    fingerprint: str
    dataset_fingerprint: str
    error: str
    videos: int = Field(ge=0)
    at: str


class PlanDoc(Record):
    format: int
    dataset_fingerprint: str
    shards_total: int = Field(ge=0)
    videos_total: int = Field(ge=0)
    shards: list[tuple[int, str, int]]
    videos_file: str | None = Field(None, pattern=PLAN_FILE_RE.pattern)
    digest: str
    not_in_manifest: int = 0
    manifest_videos: int | None = None


class Metadata(Record):
    format: Literal["faceshard"]
    schema_version: int
    fingerprint: str
    created_at: str
    faceshard_version: str
    row_affecting: dict[str, Any] | None
    config: dict[str, Any] | None
    weights: dict[str, Any]
    random_weights: list[str]
    warnings: list[str] = Field(default_factory=list)  # the build's, each once (older outputs: none)
    reconstructed: bool = False


class Identity(Record):
    """`_faceshard.json`: written once; says the output is faceshard's and where its log is."""

    format: Literal["faceshard"]
    layout: int
    log: str


class LeaseRecord(Record):
    epoch: int = Field(ge=1)
    token: str
    owner: str
    host: str
    pid: int
    pid_start: str | None
    acquired_at: str
    heartbeat_at: float
    expires_at: float
    ttl_s: float = Field(gt=0)
    heartbeat_s: float = Field(gt=0)
    beat: int = Field(ge=0)
    released: bool
    released_at: float | None = None


class _Entry(Record):
    seq: int = Field(ge=1)
    epoch: int = Field(ge=0)
    at: str


class Begin(_Entry):
    kind: Literal["begin"]
    owner: str
    host: str
    pid: int


class MetadataEntry(_Entry):
    kind: Literal["metadata"]
    metadata: Metadata


class PlanEntry(_Entry):
    kind: Literal["plan"]
    plan: PlanDoc | None


class Commit(_Entry):
    kind: Literal["commit"]
    marker: Marker


class Published(_Entry):
    kind: Literal["published"]
    shard: int = Field(ge=0)
    attempt: str = Field(pattern=ATTEMPT_RE.pattern)


class Retire(_Entry):
    kind: Literal["retire"]
    shard: int = Field(ge=0)
    reason: str


class FailureEntry(_Entry):
    kind: Literal["failure"]
    failure: Failure


class Void(_Entry):
    """What `faceshard repair` writes over an unreadable entry: epoch 0, so it changes nothing."""

    kind: Literal["void"]
    reason: str


Entry = Annotated[
    Begin | MetadataEntry | PlanEntry | Commit | Published | Retire | FailureEntry | Void,
    Field(discriminator="kind"),
]
ENTRY = TypeAdapter(Entry)


def describe_error(exc: ValidationError) -> str:
    """'field marker.files.videos.0.rows: Input should be a valid integer' for the first problems."""
    parts = []
    for error in exc.errors()[:3]:
        loc = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-after"))
        field = f"field {loc!r}" if loc else "the record"
        parts.append(f"{field}: {error['msg']}")
    return "; ".join(parts)


def validate(model: Any, data: bytes, path: str, what: str, hint: str) -> Any:
    """`data` parsed as `model` (a model class or TypeAdapter); StorageError naming file and field."""
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_json(data)
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise DamagedOutput(
            f"{path}: the {what} is invalid: {describe_error(exc)}. Nothing was changed. {hint}"
        ) from None


def epoch_of_attempt(attempt: str) -> int:
    match = ATTEMPT_RE.match(attempt)
    if match is None:
        raise ValueError(f"not an attempt id: {attempt!r}")
    return int(match.group(1))
