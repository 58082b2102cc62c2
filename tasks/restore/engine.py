"""The engine interface: what the restore does to a database, whichever engine holds it.

The real restore (:mod:`tasks.restore.swap`) plans targets, restores into staging
databases, drops them and swaps them into place the same way for both engines; what
differs per engine sits behind :class:`RestoreEngine`, implemented by
:class:`~tasks.restore.postgres.PostgresEngine` and
:class:`~tasks.restore.clickhouse.ClickHouseEngine`.

What an engine restores from differs (a Postgres dump and how to run ``pg_restore``; one
ClickHouse backup): that is the engine's ``SourceT``, handed to :meth:`restore_into`.
"""

from __future__ import annotations

from typing import Literal, Protocol, TypeVar

from pydantic import BaseModel

from tasks.decisions.checks import CheckResult
from tasks.decisions.drill import ComponentTiming

__all__ = ["ComponentOutcome", "EngineName", "RestoreEngine"]

EngineName = Literal["postgres", "clickhouse"]

SourceT = TypeVar("SourceT", contravariant=True)


class ComponentOutcome(BaseModel):
    """What restoring one component found: its checks and, when it ran, its timing."""

    checks: list[CheckResult]
    timing: ComponentTiming | None = None


class RestoreEngine(Protocol[SourceT]):
    """One engine's databases, as the restore sees them.

    Every method raises :class:`~tasks.errors.RestoreError` (secrets scrubbed) when the
    engine refuses; :meth:`restore_into` reports a failed restore as failed checks.
    """

    @property
    def name(self) -> EngineName:
        """``postgres`` or ``clickhouse``: the engine named in plans, checks and logs."""
        ...

    @property
    def live_database(self) -> str:
        """The database the applications use on this engine."""
        ...

    def exists(self, database: str) -> bool:
        """Whether ``database`` exists."""
        ...

    def drop(self, database: str) -> None:
        """Drop ``database`` if it exists (sessions attached or not)."""
        ...

    def rename(self, staging: str, target: str, previous: str | None) -> None:
        """Put ``staging`` in ``target``'s place; an existing ``target`` becomes ``previous``.

        ``previous`` is None when ``target`` does not exist.
        """
        ...

    def restore_into(self, database: str, source: SourceT) -> ComponentOutcome:
        """Restore ``source`` into ``database`` (created here) and check it."""
        ...
