"""The backup set layout and its manifest: what a complete backup set is.

A backup set lives under ``<bucket>/<stack>/<backup-id>/``::

    <stack>/<backup-id>/postgres/<database>.dump      pg_dump -Fc archive (streamed)
    <stack>/<backup-id>/clickhouse/<database>/...     ClickHouse native BACKUP
    <stack>/<backup-id>/manifest.json                 written last

The manifest is written only after every object of the set is stored and checked, so
*a set without a manifest that parses is incomplete, by definition*. Retention, restore
drills, freshness checks and deploy verification read manifests, never bare listings.

Backup ids sort by time as plain strings (``20261122T030000Z-3fa9c2``): a UTC timestamp
plus a short random suffix so two runs in the same second never collide.

Everything here is pure (no I/O): the model, the key layout and the id format.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from importlib import metadata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "BACKUP_ID_PATTERN",
    "BACKUP_ID_RE",
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA_VERSION",
    "BackupManifest",
    "ClickHouseBackup",
    "LargeObjects",
    "ObjectKind",
    "PostgresDump",
    "StoredObject",
    "backup_id_time",
    "clickhouse_prefix",
    "is_backup_id",
    "manifest_key",
    "new_backup_id",
    "postgres_dump_key",
    "product_version",
    "set_id_of_key",
    "set_prefix",
    "split_table_name",
    "stack_prefix",
    "trust_manifest",
]

MANIFEST_SCHEMA_VERSION: Literal[1] = 1
MANIFEST_NAME = "manifest.json"
BACKUP_ID_PATTERN = r"^(\d{8}T\d{6}Z)-([0-9a-f]{6})$"
"""``YYYYMMDDTHHMMSSZ-<6 hex>``: the one definition (flows' config fields use it too)."""
BACKUP_ID_RE = re.compile(BACKUP_ID_PATTERN)
_ID_TIME_FORMAT = "%Y%m%dT%H%M%SZ"

ObjectKind = Literal["postgres-dump", "clickhouse-backup"]


# ---- ids and keys -------------------------------------------------------------------


def new_backup_id(now: datetime | None = None) -> str:
    """A fresh backup id, sortable by time: ``YYYYMMDDTHHMMSSZ-<6 hex>``."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment.strftime(_ID_TIME_FORMAT)}-{secrets.token_hex(3)}"


def is_backup_id(value: str) -> bool:
    return BACKUP_ID_RE.fullmatch(value) is not None


def backup_id_time(backup_id: str) -> datetime:
    """The UTC time a backup id was minted at (the start of its run)."""
    match = BACKUP_ID_RE.fullmatch(backup_id)
    if match is None:
        raise ValueError(f"{backup_id!r} is not a backup id (YYYYMMDDTHHMMSSZ-xxxxxx)")
    return datetime.strptime(match.group(1), _ID_TIME_FORMAT).replace(tzinfo=UTC)


def stack_prefix(stack: str) -> str:
    """``<stack>/``: everything of one stack's backups lives below it."""
    return f"{stack}/"


def set_prefix(stack: str, backup_id: str) -> str:
    """``<stack>/<backup-id>/``: the prefix of one backup set."""
    return f"{stack}/{backup_id}/"


def manifest_key(stack: str, backup_id: str) -> str:
    return f"{set_prefix(stack, backup_id)}{MANIFEST_NAME}"


def postgres_dump_key(stack: str, backup_id: str, database: str) -> str:
    return f"{set_prefix(stack, backup_id)}postgres/{database}.dump"


def clickhouse_prefix(stack: str, backup_id: str, database: str) -> str:
    """Where ClickHouse writes its native backup of ``database`` (a folder of files)."""
    return f"{set_prefix(stack, backup_id)}clickhouse/{database}/"


def set_id_of_key(stack: str, key: str) -> str | None:
    """The backup id a key belongs to, or None when the key is not inside a set.

    Only ``<stack>/<backup-id>/<something>`` is part of a set; anything else under
    the bucket (other stacks, hand-placed files, ``<stack>/notes.txt``) is not ours.
    """
    prefix = stack_prefix(stack)
    if not key.startswith(prefix):
        return None
    candidate, sep, rest = key[len(prefix) :].partition("/")
    if not sep or not rest or not is_backup_id(candidate):
        return None
    return candidate


def split_table_name(qualified: str) -> tuple[str, str]:
    """``'public.LiteLLM_SpendLogs'`` -> ``('public', 'LiteLLM_SpendLogs')``.

    Row-count keys are ``<schema>.<table>`` unquoted; schema names here never hold a
    dot, table names may, so split at the first one.
    """
    schema, _, table = qualified.partition(".")
    return schema, table


def product_version() -> str:
    try:
        return metadata.version("litellm-langfuse-ops")
    except metadata.PackageNotFoundError:
        return "0+unknown"


# ---- the model ------------------------------------------------------------------------


class StoredObject(BaseModel):
    """One object of the set, with what proves it intact.

    For a ClickHouse backup the object is its ``.backup`` descriptor: that file holds
    the size and checksum of every data file of the backup, so its sha256 anchors all
    of them.
    """

    model_config = ConfigDict(frozen=True)

    key: str = Field(description="Object key inside the backup bucket.")
    size: int = Field(ge=0, description="Size in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex sha256 of the content.")
    kind: ObjectKind


class LargeObjects(BaseModel):
    """Postgres large objects (``lo_*``), which live outside every table's rows."""

    count: int = Field(ge=0, description="Rows of pg_largeobject_metadata.")
    digest: str | None = Field(
        default=None,
        description="md5 over every page of every large object, in order; None when the "
        "role may not read pg_largeobject.",
    )


class PostgresDump(BaseModel):
    """The Postgres part of a set: one consistent ``pg_dump -Fc`` of one database."""

    database: str
    server_version: str = Field(description="Server version, e.g. '16.4'.")
    pg_dump_version: str = Field(description="pg_dump version that wrote the archive.")
    snapshot_id: str = Field(description="pg_export_snapshot() id the dump and counts share.")
    dump_key: str
    dump_size: int = Field(ge=0)
    dump_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    table_rows: dict[str, int] = Field(
        description="Exact row count of every user table in the snapshot, keyed "
        "'<schema>.<table>' (unquoted, case kept)."
    )
    seconds: float = Field(ge=0, description="Wall time of the dump and upload.")
    partitioned_tables: list[str] = Field(
        default_factory=list,
        description="Partitioned parents among table_rows: their count is their "
        "partitions' rows, so totals leave them out.",
    )
    large_objects: LargeObjects | None = Field(
        default=None,
        description="Large objects in the snapshot (none recorded by older sets).",
    )
    database_size: int | None = Field(
        default=None,
        ge=0,
        description="pg_database_size of the source at the dump: what a restore needs on "
        "disk (none recorded by older sets).",
    )

    @property
    def total_rows(self) -> int:
        """Rows in the dump, each counted once (partitions, not their parents)."""
        parents = set(self.partitioned_tables)
        return sum(rows for table, rows in self.table_rows.items() if table not in parents)


class ClickHouseBackup(BaseModel):
    """The native ``BACKUP DATABASE ... TO S3`` of one ClickHouse database."""

    database: str
    server_version: str
    backup_id: str = Field(description="ClickHouse's id of the BACKUP (system.backups.id).")
    status: str = Field(description="Final status in system.backups: BACKUP_CREATED.")
    size: int = Field(ge=0, description="Bytes stored under the prefix.")
    files: int = Field(ge=0, description="Number of objects under the prefix.")
    s3_prefix: str = Field(description="Key prefix of the backup inside the bucket.")
    table_rows: dict[str, int] = Field(
        description="Rows per table that the backup holds (its parts' count.txt summed)."
    )
    rows_exact: bool = Field(
        default=True,
        description="True: table_rows were read from the backup itself. Sets made before "
        "that carry False when the live counts changed while BACKUP ran.",
    )
    seconds: float = Field(ge=0)


class BackupManifest(BaseModel):
    """The record of a complete backup set (``manifest.json``, written last)."""

    schema_version: Literal[1] = MANIFEST_SCHEMA_VERSION
    backup_id: str
    stack: str
    bucket: str
    started_at: datetime
    finished_at: datetime
    product_version: str = Field(default_factory=product_version)
    tool_versions: dict[str, str] = Field(
        default_factory=dict,
        description="Versions of the tools and servers involved: python, prefect, pg_dump, "
        "postgres, clickhouse.",
    )
    objects: list[StoredObject]
    postgres: PostgresDump
    clickhouse: list[ClickHouseBackup] = Field(default_factory=list)

    @field_validator("backup_id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not is_backup_id(value):
            raise ValueError("is not a backup id (YYYYMMDDTHHMMSSZ-xxxxxx)")
        return value

    @property
    def prefix(self) -> str:
        return set_prefix(self.stack, self.backup_id)

    @property
    def key(self) -> str:
        return manifest_key(self.stack, self.backup_id)

    @property
    def total_size(self) -> int:
        return self.postgres.dump_size + sum(ch.size for ch in self.clickhouse)

    def clickhouse_for(self, database: str) -> ClickHouseBackup | None:
        return next((ch for ch in self.clickhouse if ch.database == database), None)

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> BackupManifest:
        return cls.model_validate_json(data)


def trust_manifest(
    raw: bytes, stack: str, backup_id: str, key: str
) -> tuple[BackupManifest | None, str | None]:
    """The one judge of a stored manifest: the manifest, or why it cannot be trusted.

    Retention, freshness, the drill and the restore all ask here, so a set one of them
    counts as complete is a set the others will restore: a schema this version reads,
    every field valid, and naming the very set it is stored in.
    """
    try:
        data = json.loads(raw)
    except ValueError:
        return None, f"{key} does not parse (not JSON)"
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version is not None and version != MANIFEST_SCHEMA_VERSION:
        return None, (
            f"{key} has schema_version {version!r}, this version reads "
            f"{MANIFEST_SCHEMA_VERSION}: restore with the release that wrote it"
        )
    try:
        manifest = BackupManifest.from_json(raw)
    except ValidationError as exc:
        fields = [".".join(str(part) for part in error["loc"]) for error in exc.errors()]
        shown = ", ".join(fields[:5]) + (
            f" ... and {len(fields) - 5} more" if len(fields) > 5 else ""
        )
        return None, f"{key} does not parse ({exc.error_count()} error(s): {shown})"
    if manifest.backup_id != backup_id or manifest.stack != stack:
        return None, (
            f"{key} names set {manifest.stack}/{manifest.backup_id}, not {stack}/{backup_id}"
        )
    return manifest, None
