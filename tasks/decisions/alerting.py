"""The health alert state machine: who gets told what, after each sweep. Pure; no I/O.

:func:`decide` takes the persisted :class:`StackState`, one sweep's check results, the
time, the :class:`AlertPolicy` and the active silences, and returns the next state
plus the notices to send. The sweep persists the state outside the worker (a Prefect
Variable per stack), so a restarted worker continues the count where it was.

Per service, per incident:

- **alert** once the service has been bad (degraded or unhealthy) for
  ``alert_after`` consecutive sweeps (default 3), or when it flaps (``flap_threshold``
  good/bad changes within the last ``flap_window`` sweeps): an intermittent failure is
  a real one, reported once instead of never or every time;
- **escalation** once, when an incident notified as degraded turns unhealthy;
- **reminder** every ``reminder_every_min`` while still open, at most ``max_reminders``;
- **recovery** once, after ``recover_after`` consecutive healthy sweeps once the
  window has calmed (fewer than half ``flap_threshold`` changes), and only if an alert
  went out.

A single bad sweep (a blip) never notifies. Silences (per stack or per service, until
a time) stop every notice; the state keeps counting, so an outage still present when
the silence ends alerts then, and a recovery during it is told after it.

Grouping and inhibition: the notices of one sweep become one message per channel
(:mod:`tasks.decisions.delivery`, which also keeps what a channel refused); a
service failing while one of its dependencies (Postgres, ClickHouse, Redis, object
storage) is also failing is reported as *impacted by* it, on chat only: only the
dependency pages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.decisions.alerts import Severity
from tasks.decisions.health import STATUS_RANK, HealthStatus, ServiceHealth

__all__ = [
    "DEPENDS_ON",
    "MAX_REASON",
    "ROOT_SERVICES",
    "AlertPolicy",
    "ChannelBackoff",
    "Decision",
    "Notice",
    "NoticeKind",
    "ServiceState",
    "Silence",
    "StackState",
    "StatusChange",
    "closing_switched_off",
    "decide",
    "flips",
    "impacted_by",
    "is_bad",
    "step",
    "trailing",
    "with_reasons_cut",
    "worst_status",
]

NoticeKind = Literal["alert", "escalation", "reminder", "recovery"]

# The dependencies whose outage explains other services' failures.
ROOT_SERVICES: tuple[str, ...] = ("postgres", "clickhouse", "redis", "object-storage")
DEPENDS_ON: dict[str, tuple[str, ...]] = {
    "litellm-readiness": ("postgres", "redis"),
    "langfuse-web": ("postgres", "clickhouse", "redis", "object-storage"),
    "langfuse-worker": ("postgres", "clickhouse", "redis", "object-storage"),
    "backup-freshness": ("object-storage",),
    # A dead worker or Redis explains a queue that does not drain.
    "langfuse-queues": ("redis", "langfuse-worker"),
    "migrations": ("postgres", "clickhouse"),
    "postgres-maintenance": ("postgres",),
    "clickhouse-storage": ("clickhouse",),
    # A canary that cannot arrive because a part of its path is down says nothing new.
    "ingestion-lag": ("litellm", "langfuse-web", "langfuse-worker", "langfuse-queues"),
}

_CHAR: dict[str, str] = {"healthy": "h", "degraded": "d", "unhealthy": "u"}
MAX_REASON = 160


class AlertPolicy(BaseModel):
    """When to tell people; bounded so a typo cannot make a storm or silence a pager."""

    model_config = ConfigDict(frozen=True)

    alert_after: int = Field(
        default=3, ge=1, le=30, description="Consecutive bad sweeps before the first alert."
    )
    recover_after: int = Field(
        default=2, ge=1, le=30, description="Consecutive healthy sweeps before the recovery."
    )
    reminder_every_min: float = Field(
        default=30, ge=1, le=24 * 60, description="Minutes between reminders of an open incident."
    )
    max_reminders: int = Field(default=3, ge=0, le=50, description="Reminders per incident.")
    flap_window: int = Field(
        default=12, ge=4, le=30, description="Sweeps looked back at for flapping."
    )
    flap_threshold: int = Field(
        default=6,
        ge=3,
        le=30,
        description="Good/bad changes within the window that make a service flapping.",
    )

    @model_validator(mode="after")
    def _fits_window(self) -> AlertPolicy:
        if max(self.alert_after, self.recover_after) > self.flap_window:
            raise ValueError("alert_after and recover_after must not exceed flap_window")
        if self.flap_threshold >= self.flap_window:
            raise ValueError("flap_threshold must be below flap_window")
        return self


class Silence(BaseModel):
    """No notices for ``service`` (or the whole stack when None) until ``until``."""

    model_config = ConfigDict(frozen=True)

    service: str | None = Field(default=None, description="None silences the whole stack.")
    until: datetime
    reason: str = Field(default="", max_length=200)

    def covers(self, service: str, now: datetime) -> bool:
        return now < self.until and (self.service is None or self.service == service)


class ChannelBackoff(BaseModel):
    """A channel that refused: how often in a row, and when to try it again on its own."""

    model_config = ConfigDict(frozen=True)

    failures: int = Field(ge=1)
    next_sweep: int = Field(ge=0, description="The sweep count from which to try it again.")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STATUS_OF: dict[str, HealthStatus] = {"h": "healthy", "d": "degraded", "u": "unhealthy"}


def _micros(moment: datetime | None) -> int | None:
    return None if moment is None else (moment - _EPOCH) // timedelta(microseconds=1)


def _moment(micros: int | None) -> datetime | None:
    return None if micros is None else _EPOCH + timedelta(microseconds=micros)


class ServiceState(BaseModel):
    """What the machine remembers about one service between sweeps.

    Stored packed (:meth:`packed`: a list, times as epoch microseconds), so every
    service a sweep knows fits Prefect's 5,000 characters with room for reasons; the
    field-by-field form is read too.
    """

    history: str = Field(default="", description="Last statuses, oldest first: h, d, u.")
    status: HealthStatus = "healthy"
    since: datetime | None = Field(default=None, description="When the status began.")
    bad_since: datetime | None = Field(default=None, description="Start of the bad streak.")
    reason: str = ""
    open: bool = Field(default=False, description="An alert went out and no recovery yet.")
    notified: HealthStatus | None = Field(default=None, description="Worst status told.")
    paged: bool = Field(default=False, description="Told at critical severity (pager).")
    last_notified: datetime | None = None
    reminders: int = 0

    def packed(self) -> list[object]:
        return [
            self.history,
            _CHAR[self.status],
            _micros(self.since),
            _micros(self.bad_since),
            self.reason,
            int(self.open),
            None if self.notified is None else _CHAR[self.notified],
            int(self.paged),
            _micros(self.last_notified),
            self.reminders,
        ]

    @model_validator(mode="before")
    @classmethod
    def _unpack(cls, data: object) -> object:
        if not isinstance(data, list):
            return data
        if len(data) != 10:
            raise ValueError(f"a packed service state has 10 fields, not {len(data)}")
        history, status, since, bad_since, reason, is_open, notified, paged, last, reminders = data
        return {
            "history": history,
            "status": _STATUS_OF[status],
            "since": _moment(since),
            "bad_since": _moment(bad_since),
            "reason": reason,
            "open": bool(is_open),
            "notified": None if notified is None else _STATUS_OF[notified],
            "paged": bool(paged),
            "last_notified": _moment(last),
            "reminders": reminders,
        }


class StackState(BaseModel):
    """The persisted state of one stack; small enough for a Prefect Variable (5,000 chars)."""

    version: int = 1
    sweeps: int = 0
    last_sweep: datetime | None = None
    notifications_sent: int = 0
    channel_failures: int = 0
    services: dict[str, ServiceState] = Field(default_factory=dict)
    owed: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Channel (route block) -> service -> the notice it refused, two "
        "letters (tasks/decisions/delivery.py); sent again until accepted or moot.",
    )
    backoff: dict[str, ChannelBackoff] = Field(
        default_factory=dict, description="Channels that refused, and when to retry them."
    )
    backlog: list[tuple[int, int]] = Field(
        default_factory=list,
        description="(epoch s, jobs waiting in all queues) of the last sweeps: the queues' "
        "growth is judged across sweeps (tasks/decisions/queues.py).",
    )

    def packed(self) -> dict[str, object]:
        """The stored form: JSON, each service packed (``StackState.model_validate`` reads
        it back, as it reads the field-by-field form)."""
        stored = self.model_dump(mode="json", exclude={"services"})
        stored["services"] = {name: s.packed() for name, s in self.services.items()}
        return stored


class Notice(BaseModel):
    """One line of a grouped message: what happened to one service."""

    model_config = ConfigDict(frozen=True)

    service: str
    kind: NoticeKind
    status: HealthStatus
    severity: Severity
    reason: str
    since: datetime | None
    impacted_by: str | None = None
    flapping: bool = False


class StatusChange(BaseModel):
    """A service whose status differs from the previous sweep (one Prefect event each)."""

    model_config = ConfigDict(frozen=True)

    service: str
    previous: HealthStatus | None
    status: HealthStatus
    reason: str


class Decision(BaseModel):
    state: StackState
    notices: list[Notice]
    changes: list[StatusChange]
    impacted_by: dict[str, str] = Field(
        default_factory=dict, description="Failing service -> the failing dependency behind it."
    )


def is_bad(status: HealthStatus) -> bool:
    return status != "healthy"


def trailing(history: str, chars: str) -> int:
    """How many of the last entries of ``history`` are all in ``chars``."""
    count = 0
    for char in reversed(history):
        if char not in chars:
            break
        count += 1
    return count


def flips(history: str) -> int:
    """Good/bad changes in ``history`` (degraded <-> unhealthy is not a flip)."""
    return sum(1 for a, b in pairwise(history) if (a == "h") != (b == "h"))


def impacted_by(
    results: dict[str, HealthStatus], bad_since: Mapping[str, datetime] | None = None
) -> dict[str, str]:
    """Failing service -> first failing dependency that explains it.

    ``bad_since`` (from the previous sweep's state) keeps a service that was failing
    before its dependency failed out of the dependency's impacts: it fails for its
    own reason, and its own incident stays as it was.
    """
    since = bad_since or {}
    found: dict[str, str] = {}
    for service, status in results.items():
        if not is_bad(status):
            continue
        for dependency in DEPENDS_ON.get(service, ()):
            if not is_bad(results.get(dependency, "healthy")):
                continue
            mine, theirs = since.get(service), since.get(dependency)
            if mine is not None and (theirs is None or mine < theirs):
                continue
            found[service] = dependency
            break
    return found


def _silenced(service: str, cause: str | None, silences: list[Silence], now: datetime) -> bool:
    # A service impacted by a silenced dependency is part of that maintenance too.
    return any(s.covers(service, now) or (cause and s.covers(cause, now)) for s in silences)


SWITCHED_OFF_REASON = "switched off (OPS_PROBES_OFF or the sweep's skip): no longer checked"


def closing_switched_off(state: StackState, off: Iterable[str]) -> list[ServiceHealth]:
    """A healthy reading for each switched-off probe whose incident is still open, so the
    incident (and its pager incident) resolves, saying why, instead of staying open for
    ever with nothing checking it."""
    names = set(off)
    return [
        ServiceHealth(service=name, status="healthy", latency_ms=0.0, reason=SWITCHED_OFF_REASON)
        for name, service in sorted(state.services.items())
        if name in names and service.open
    ]


def decide(
    state: StackState,
    results: list[ServiceHealth],
    now: datetime,
    policy: AlertPolicy | None = None,
    silences: list[Silence] | None = None,
) -> Decision:
    """The next state and the notices of one sweep. Pure: same inputs, same outputs."""
    policy = policy or AlertPolicy()
    silences = silences or []
    bad_since = {
        service: previous.bad_since
        for service, previous in state.services.items()
        if previous.bad_since is not None and is_bad(previous.status)
    }
    causes = impacted_by({r.service: r.status for r in results}, bad_since)
    services = dict(state.services)
    notices: list[Notice] = []
    changes: list[StatusChange] = []
    for result in results:
        previous = services.get(result.service)
        if previous is None or previous.status != result.status:
            changes.append(
                StatusChange(
                    service=result.service,
                    previous=None if previous is None else previous.status,
                    status=result.status,
                    reason=result.reason[:MAX_REASON],
                )
            )
        cause = causes.get(result.service)
        silenced = _silenced(result.service, cause, silences, now)
        services[result.service], notice = step(previous, result, cause, silenced, now, policy)
        if notice is not None:
            notices.append(notice)
    new_state = state.model_copy(
        update={"sweeps": state.sweeps + 1, "last_sweep": now, "services": services}
    )
    return Decision(state=new_state, notices=notices, changes=changes, impacted_by=causes)


def step(
    previous: ServiceState | None,
    result: ServiceHealth,
    cause: str | None,
    silenced: bool,
    now: datetime,
    policy: AlertPolicy,
) -> tuple[ServiceState, Notice | None]:
    """One service, one sweep: its next state and at most one notice."""
    prev = previous or ServiceState()
    status = result.status
    bad = is_bad(status)
    history = (prev.history + _CHAR[status])[-policy.flap_window :]
    since = now if previous is None or prev.status != status or prev.since is None else prev.since
    # While an incident is open its start is kept, for the recovery's "bad since".
    bad_since = (prev.bad_since or now) if bad else (prev.bad_since if prev.open else None)
    flapping = flips(history) >= policy.flap_threshold
    nxt = prev.model_copy(
        update={
            "history": history,
            "status": status,
            "since": since,
            "bad_since": bad_since,
            "reason": result.reason[:MAX_REASON],
        }
    )
    template = Notice(
        service=result.service,
        kind="alert",
        status=status,
        severity="warning",
        reason=nxt.reason,
        since=bad_since or since,
        impacted_by=cause,
        flapping=flapping,
    )

    def tell(kind: NoticeKind, severity: Severity) -> Notice:
        return template.model_copy(update={"kind": kind, "severity": severity})

    if silenced:
        return nxt, None
    if not nxt.open:
        if bad and (trailing(history, "du") >= policy.alert_after or flapping):
            severity: Severity = (
                "critical" if status == "unhealthy" and cause is None else "warning"
            )
            opened = nxt.model_copy(
                update={
                    "open": True,
                    "notified": status,
                    "paged": severity == "critical",
                    "last_notified": now,
                    "reminders": 0,
                }
            )
            return opened, tell("alert", severity)
        return nxt, None
    # Hysteresis: a flapping incident closes only once the window has calmed to under
    # half the threshold, so a service cannot alert and recover every few minutes.
    calm = flips(history) * 2 < policy.flap_threshold
    if not bad and trailing(history, "h") >= policy.recover_after and calm:
        closed = nxt.model_copy(
            update={
                "open": False,
                "notified": None,
                "paged": False,
                "bad_since": None,
                "last_notified": now,
                "reminders": 0,
            }
        )
        return closed, tell("recovery", "critical" if nxt.paged else "warning")
    if status == "unhealthy" and cause is None and not nxt.paged:
        escalated = nxt.model_copy(
            update={"notified": "unhealthy", "paged": True, "last_notified": now}
        )
        return escalated, tell("escalation", "critical")
    if (
        nxt.reminders < policy.max_reminders
        and nxt.last_notified is not None
        and now - nxt.last_notified >= timedelta(minutes=policy.reminder_every_min)
    ):
        reminded = nxt.model_copy(update={"reminders": nxt.reminders + 1, "last_notified": now})
        return reminded, tell("reminder", "critical" if nxt.paged else "warning")
    return nxt, None


def with_reasons_cut(state: StackState, chars: int) -> StackState:
    """``state`` with every remembered reason cut to ``chars`` characters.

    Reasons are the one unbounded part of the state (response bodies, any language);
    the rest has a size fixed by the number of services. Notices always carry the
    current sweep's reason, so a shorter remembered one changes no message.
    """
    return state.model_copy(
        update={
            "services": {
                name: service.model_copy(update={"reason": service.reason[:chars]})
                for name, service in state.services.items()
            }
        }
    )


def worst_status(statuses: list[HealthStatus]) -> HealthStatus:
    return max(statuses, key=lambda s: STATUS_RANK[s], default="healthy")
