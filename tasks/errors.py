"""Every error the product raises on purpose.

    OpsError                      base: a message a person can act on, never a secret
    ├── StackConfigError          the stack block (or the env it was built from) is wrong
    ├── ToolVersionError          pg_dump/pg_restore older than the server they talk to
    ├── BackupError               a backup set could not be made
    │   ├── PostgresDumpError     pg_dump failed or the server went away mid-dump
    │   ├── StorageError          S3 refused a write, a read or a listing
    │   └── ClickHouseBackupError BACKUP ended in a state other than BACKUP_CREATED
    ├── RestoreError              a set could not be restored or verified
    │   └── IntegrityError        checksum, size, schema or row counts disagree with the manifest
    ├── RetentionError            the prune plan broke an invariant (refuses to delete)
    ├── NotificationError         a channel refused a message or did not answer
    ├── VerificationError         deploy-verify found a required check failing
    └── ControlPlaneError         the bootstrap could not prepare the Prefect server

Messages say what broke and what to do; they are scrubbed of secret values by the
code that raises them (see ``blocks.stack.Stack.scrub``).
"""

from __future__ import annotations

__all__ = [
    "BackupError",
    "ClickHouseBackupError",
    "ControlPlaneError",
    "HealthSweepError",
    "IntegrityError",
    "NotificationError",
    "OffsiteError",
    "OpsError",
    "PostgresDumpError",
    "RestoreError",
    "RetentionError",
    "StackConfigError",
    "StorageError",
    "ToolVersionError",
    "VerificationError",
]


class OpsError(Exception):
    """Base of every error raised on purpose by this product."""


class StackConfigError(OpsError, ValueError):
    """The stack configuration is incomplete or malformed; the message lists every field."""


class ToolVersionError(OpsError):
    """A client tool is older than the server it must talk to."""


class BackupError(OpsError):
    """A backup set could not be completed; no manifest was written."""


class PostgresDumpError(BackupError):
    """pg_dump failed, or the server went away while it ran."""


class StorageError(BackupError):
    """The object store refused an operation."""


class ClickHouseBackupError(BackupError):
    """A ClickHouse BACKUP did not reach BACKUP_CREATED."""


class RestoreError(OpsError):
    """A backup set could not be restored."""


class IntegrityError(RestoreError):
    """A backup set disagrees with its manifest (checksum, size, schema, row counts)."""


class RetentionError(OpsError):
    """A prune plan would break a retention invariant; nothing was deleted."""


class VerificationError(OpsError):
    """A required deploy-verify check failed."""


class ControlPlaneError(OpsError):
    """The Prefect server could not be prepared: API unreachable, pool type, deploy failed."""


class HealthSweepError(OpsError):
    """One or more stacks of a health-sweep run could not be swept."""


class NotificationError(OpsError):
    """A notification channel refused a message or did not answer in time."""


class OffsiteError(OpsError):
    """The off-site copy could not be made, pruned or opened; the message names the cause."""
