"""What retention decides from: the policy, and the listing it is given."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ObjectRecord", "RetentionPolicy", "UploadRecord"]


class RetentionPolicy(BaseModel):
    """How many backup sets to keep. The defaults keep at least the last 7 days."""

    model_config = ConfigDict(frozen=True)

    keep_last: int = Field(default=7, ge=1, le=1000, description="Always keep the last N sets.")
    keep_within_days: int = Field(
        default=7, ge=0, le=3650, description="Keep every complete set younger than N days."
    )
    keep_daily: int = Field(
        default=7, ge=0, le=3650, description="Keep the newest set of each of the last N days."
    )
    keep_weekly: int = Field(
        default=4, ge=0, le=520, description="Keep the newest set of each of the last N weeks."
    )
    keep_monthly: int = Field(
        default=6, ge=0, le=240, description="Keep the newest set of each of the last N months."
    )
    min_keep: int = Field(
        default=3, ge=1, le=1000, description="Never leave fewer complete sets than this."
    )
    require_verified: bool | None = Field(
        default=None,
        description="Count as good only sets that passed a restore drill: never delete the "
        "newest one, nor the undrilled sets newer than it, and keep min_keep of them. "
        "Empty (default): on when the stack's restore-drill deployment has an active "
        "schedule; the plan shows what was decided.",
    )
    incomplete_grace_hours: float = Field(
        default=24.0,
        ge=1.0,
        le=24.0 * 90,
        description="Delete a set without manifest only after this long without activity.",
    )
    multipart_grace_hours: float = Field(
        default=24.0,
        ge=1.0,
        le=24.0 * 90,
        description="Abort an unfinished multipart upload only after this long.",
    )

    @property
    def verified_only(self) -> bool:
        """``require_verified`` as decided (an undecided policy keeps the plain rules)."""
        return self.require_verified is True


class ObjectRecord(BaseModel):
    """One object of the listing under the bucket (any key, ours or not)."""

    model_config = ConfigDict(frozen=True)

    key: str
    size: int = 0
    last_modified: datetime | None = None


class UploadRecord(BaseModel):
    """One unfinished multipart upload."""

    model_config = ConfigDict(frozen=True)

    key: str
    upload_id: str
    initiated: datetime | None = None
