"""The off-site copy of a backup set: its layout, its manifest, and what makes it complete.

Off-site, a set lives under the target's prefix with the primary's keys, each object
age-encrypted (``.age`` appended)::

    <prefix><stack>/<backup-id>/postgres/<database>.dump.age
    <prefix><stack>/<backup-id>/clickhouse/<database>/....age
    <prefix><stack>/<backup-id>/manifest.json.age        the primary manifest, sealed
    <prefix><stack>/<backup-id>/offsite.json             written last, plain JSON

``offsite.json`` is written only after every object was copied, its plaintext checked
against the primary manifest (sha256 for the objects the manifest lists, the size for
the files of a ClickHouse backup, which its sha256-anchored descriptor lists), and its
ciphertext read back from the target and compared: *a set is off-site only when its
offsite.json parses*. It records the fingerprint of the age key the set is encrypted
to, so a drill with another key fails naming both. It holds no secret and no data:
keys, sizes, digests, times.

Pure: no I/O.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.decisions.manifest import MANIFEST_NAME, set_prefix

__all__ = [
    "OFFSITE_MANIFEST_NAME",
    "SEALED_SUFFIX",
    "OffsiteManifest",
    "OffsiteObject",
    "offsite_manifest_key",
    "sealed_key",
    "trust_offsite_manifest",
]

OFFSITE_MANIFEST_NAME = "offsite.json"
SEALED_SUFFIX = ".age"


def sealed_key(prefix: str, primary_key: str) -> str:
    """The off-site key of a primary object."""
    return f"{prefix}{primary_key}{SEALED_SUFFIX}"


def offsite_manifest_key(prefix: str, stack: str, backup_id: str) -> str:
    return f"{prefix}{set_prefix(stack, backup_id)}{OFFSITE_MANIFEST_NAME}"


class OffsiteObject(BaseModel):
    """One copied object: its primary key and plaintext, and what is stored off-site."""

    model_config = ConfigDict(frozen=True)

    key: str = Field(description="The primary key (inside the backup bucket).")
    size: int = Field(ge=0, description="Plaintext bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Plaintext sha256.")
    stored_size: int = Field(ge=0, description="Ciphertext bytes off-site.")
    stored_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Ciphertext sha256.")


class OffsiteManifest(BaseModel):
    """The record of a complete off-site copy (``offsite.json``, written last)."""

    schema_version: Literal[1] = 1
    stack: str
    backup_id: str
    encryption: Literal["age-x25519"] = "age-x25519"
    key_fingerprint: str = Field(description="sha256 of the age recipient, first 16 hex.")
    source_bucket: str
    copied_at: datetime
    seconds: float = Field(ge=0)
    objects: list[OffsiteObject]

    @property
    def plain_bytes(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def stored_bytes(self) -> int:
        return sum(o.stored_size for o in self.objects)

    def manifest_object(self) -> OffsiteObject | None:
        """The sealed primary manifest of the set."""
        name = set_prefix(self.stack, self.backup_id) + MANIFEST_NAME
        return next((o for o in self.objects if o.key == name), None)

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


def trust_offsite_manifest(
    raw: bytes, stack: str, backup_id: str, key: str
) -> tuple[OffsiteManifest | None, str | None]:
    """The off-site manifest, or why it cannot be trusted (the one judge of it)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None, f"{key} does not parse (not JSON)"
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version is not None and version != 1:
        return None, f"{key} has schema_version {version!r}, this version reads 1"
    try:
        manifest = OffsiteManifest.model_validate(data)
    except ValidationError as exc:
        return None, f"{key} does not parse ({exc.error_count()} error(s))"
    if manifest.stack != stack or manifest.backup_id != backup_id:
        return None, (
            f"{key} names set {manifest.stack}/{manifest.backup_id}, not {stack}/{backup_id}"
        )
    if manifest.manifest_object() is None:
        return None, f"{key} lists no sealed manifest.json: the copy is not a whole set"
    return manifest, None
