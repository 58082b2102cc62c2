"""The off-site target: a second S3 bucket, at any provider, that holds an encrypted copy
of every complete backup set, so the backups survive losing the whole Railway project.

Part of the stack block (``Stack.offsite``), filled from ``OFFSITE_*`` variables. Objects
are encrypted to an age recipient (``age1...``, public: the backup needs only this); the
identity that opens them (``AGE-SECRET-KEY-1...``) is a secret that only drills and
restores load, and that operators keep outside Railway too. Several identities may be
given, comma-separated, while a key is being rotated.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from blocks.stack_clients import S3_READ_TIMEOUT_S, minio_client

if TYPE_CHECKING:
    from minio import Minio
    from pyrage.x25519 import Identity, Recipient

__all__ = [
    "OFFSITE_DEFAULTED",
    "OFFSITE_ENV",
    "OffsiteTarget",
    "check_base_url",
    "check_bucket",
    "key_fingerprint",
]

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

# Environment variable -> field of OffsiteTarget.
OFFSITE_ENV: dict[str, str] = {
    "OFFSITE_S3_ENDPOINT": "endpoint",
    "OFFSITE_S3_REGION": "region",
    "OFFSITE_S3_BUCKET": "bucket",
    "OFFSITE_S3_PREFIX": "prefix",
    "OFFSITE_S3_ACCESS_KEY": "access_key",
    "OFFSITE_S3_SECRET_KEY": "secret_key",
    "OFFSITE_AGE_RECIPIENT": "age_recipient",
    "OFFSITE_AGE_IDENTITY": "age_identity",
}
# Fields with a default: set alone (a template's region), they configure nothing.
OFFSITE_DEFAULTED = frozenset({"region", "prefix"})


def check_base_url(value: str, schemes: tuple[str, ...], allow_path: bool = False) -> str:
    """``value`` without a trailing slash, or ValueError saying what is wrong with it."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:  # a non-numeric or out-of-range port
        raise ValueError(f"port is not a number between 1 and 65535 ({exc})") from None
    if parts.scheme not in schemes:
        raise ValueError(f"scheme must be one of {', '.join(schemes)}")
    if not parts.hostname:
        raise ValueError("has no host")
    if port == 0:
        raise ValueError("port 0 is not a port")
    if not allow_path and parts.path not in ("", "/"):
        raise ValueError(f"must not have a path (found {parts.path!r})")
    return value.rstrip("/")


def check_bucket(value: str) -> str:
    if not _BUCKET_RE.fullmatch(value):
        raise ValueError("is not a valid S3 bucket name")
    return value


def key_fingerprint(recipient: str) -> str:
    """A short, stable name of an age key: sha256 of its recipient (``age1...``) string."""
    return hashlib.sha256(recipient.strip().encode()).hexdigest()[:16]


class OffsiteTarget(BaseModel):
    """Where the encrypted copies go, and the age keys that seal and open them."""

    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

    endpoint: str = Field(description="S3 endpoint, e.g. https://s3.eu-central-1.amazonaws.com.")
    region: str = Field(default="us-east-1", description="S3 region of the bucket.")
    bucket: str = Field(description="Bucket of the off-site copies.")
    prefix: str = Field(
        default="", max_length=200, description="Key prefix inside the bucket, e.g. 'llm/'."
    )
    access_key: str = Field(min_length=1, description="Access key id of the off-site target.")
    secret_key: SecretStr = Field(description="Secret key of the off-site target.")
    age_recipient: str = Field(
        description="age recipient (public key, age1...) every copied object is encrypted to."
    )
    age_identity: SecretStr | None = Field(
        default=None,
        description="age identity (AGE-SECRET-KEY-1...) that opens the copies; several "
        "comma-separated while rotating. Needed by drills and restores from off-site only.",
    )

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str) -> str:
        return check_base_url(value, ("http", "https"))

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        return check_bucket(value)

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        value = value.strip().strip("/")
        if any(part in ("", ".", "..") for part in value.split("/")) and value:
            raise ValueError("must be a plain key prefix such as 'backups/llm'")
        return f"{value}/" if value else ""

    @field_validator("age_recipient")
    @classmethod
    def _check_recipient(cls, value: str) -> str:
        from pyrage import RecipientError, x25519

        try:
            x25519.Recipient.from_str(value.strip())
        except RecipientError:
            raise ValueError("is not an age recipient (age1..., from `age-keygen -y`)") from None
        return value.strip()

    @field_validator("age_identity")
    @classmethod
    def _check_identity(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        from pyrage import IdentityError, x25519

        for part in _split_keys(value.get_secret_value()):
            try:
                x25519.Identity.from_str(part)
            except IdentityError:
                raise ValueError(
                    "is not an age identity (AGE-SECRET-KEY-1..., the key line of "
                    "`age-keygen`'s file); several are separated by commas"
                ) from None
        return value

    # ---- keys -----------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """The recipient's fingerprint, recorded in every off-site manifest."""
        return key_fingerprint(self.age_recipient)

    def recipient(self) -> Recipient:
        from pyrage import x25519

        return x25519.Recipient.from_str(self.age_recipient)

    def identities(self) -> list[Identity]:
        """The identities that open the copies; empty when none is configured."""
        from pyrage import x25519

        if self.age_identity is None:
            return []
        return [
            x25519.Identity.from_str(k) for k in _split_keys(self.age_identity.get_secret_value())
        ]

    def identity_fingerprints(self) -> list[str]:
        return [key_fingerprint(str(identity.to_public())) for identity in self.identities()]

    # ---- the bucket -----------------------------------------------------------------

    def client(self, *, timeout_s: float = S3_READ_TIMEOUT_S, retries: int = 2) -> Minio:
        return minio_client(
            self.endpoint,
            self.access_key,
            self.secret_key.get_secret_value(),
            self.region,
            timeout_s=timeout_s,
            retries=retries,
        )

    def key(self, primary_key: str) -> str:
        """The off-site key of a primary object (``<prefix><stack>/<set>/...``)."""
        return f"{self.prefix}{primary_key}"

    def secret_values(self) -> list[str]:
        values = [self.secret_key.get_secret_value()]
        if self.age_identity is not None:
            values.extend(_split_keys(self.age_identity.get_secret_value()))
        return [v for v in values if v]

    def describe(self) -> str:
        prefix = self.prefix or "-"
        return f"{self.endpoint} (bucket {self.bucket}, prefix {prefix}, key {self.fingerprint})"


def _split_keys(raw: str) -> list[str]:
    return [part.strip() for part in re.split(r"[,\s]+", raw) if part.strip()]
