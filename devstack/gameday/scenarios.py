"""The incidents a game day plays: each breaks something for real and says what pages it
expects."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx

from devstack.gameday.day import FLAP_THRESHOLD, PAGER, SLACK, GameDay, Scenario

__all__ = ["scenarios"]


def _stopped(name: str) -> Callable[[GameDay], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def fault(day: GameDay) -> Iterator[None]:
        with day.devstack.stopped(name):
            yield

    return fault


def _frozen(name: str) -> Callable[[GameDay], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def fault(day: GameDay) -> Iterator[None]:
        with day.devstack.frozen(name):
            yield

    return fault


def _flapping(
    name: str, cycles: int
) -> Callable[[GameDay], contextlib.AbstractContextManager[None]]:
    """Down for one sweep, up for the next, ``cycles`` times: never ``alert_after`` bad
    sweeps in a row, so only flap detection can page (once), and the incident closes
    only after the window has calmed."""

    @contextlib.contextmanager
    def fault(day: GameDay) -> Iterator[None]:
        # Toggle right after a sweep ended, so the next sweep sees the new state: one
        # change per sweep, the fastest flapping a 1-minute monitor can see.
        day.wait_sweep_end(datetime.now(UTC), day.interval_s * 4 + 60)
        day.fault_at = datetime.now(UTC)
        for _ in range(cycles):
            with day.devstack.stopped(name):
                day.wait_sweep_end(datetime.now(UTC), day.interval_s * 4 + 60)
            day.wait_sweep_end(datetime.now(UTC), day.interval_s * 4 + 60)
        yield

    return fault


def _s3_down_during_backup(day: GameDay) -> contextlib.AbstractContextManager[None]:
    """A backup runs; S3 stops while its dump is being uploaded, and stays down."""

    @contextlib.contextmanager
    def fault() -> Iterator[None]:
        from flows.backup import BackupConfig, backup
        from tasks.postgres import dump_hooks

        stopped: list[int] = []

        def stop_s3(streamed: int) -> None:
            if streamed > 6 * 1024 * 1024 and not stopped:
                stopped.append(streamed)
                day.fault_at = datetime.now(UTC)
                day.devstack.stop_service("s3")

        try:
            with dump_hooks(on_bytes=stop_s3):
                state = backup(
                    stack=day.stack,
                    config=BackupConfig(part_size_mb=5, upload_threads=1),
                    return_state=True,
                )
            day.notes.append(f"backup during the outage: {state.name}, no manifest")
            yield
        finally:
            day.devstack.start_service("s3")

    return fault()


def _server_restarted_mid_sweep(day: GameDay) -> contextlib.AbstractContextManager[None]:
    """The Prefect server stopped and started again while a sweep runs; the sweeps after
    it must run (the deployment's one-at-a-time slot is a lease kept on disk)."""

    @contextlib.contextmanager
    def fault() -> Iterator[None]:
        day.wait_running_sweep(deadline_s=day.interval_s * 4 + 60)
        day.fault_at = datetime.now(UTC)
        day.devstack.stop_service("prefect_server")
        day.devstack.start_service("prefect_server")
        yield

    return fault()


def _next_backup(day: GameDay) -> None:
    from flows.backup import backup

    state = backup(stack=day.stack, return_state=True)
    day.notes.append(
        f"next backup: {state.name}" + (", set complete" if state.is_completed() else "")
    )


def _langfuse(mode: str) -> Callable[[GameDay], contextlib.AbstractContextManager[None]]:
    @contextlib.contextmanager
    def fault(day: GameDay) -> Iterator[None]:
        url = day.devstack.url("langfuse")
        httpx.post(f"{url}/__standin/fault", json={"mode": mode}, timeout=10).raise_for_status()
        try:
            yield
        finally:
            httpx.post(f"{url}/__standin/fault", json={"mode": "ok"}, timeout=10)

    return fault


def scenarios(short: bool = False) -> list[Scenario]:
    """The incidents, in the order they are played; ``short``: the suite's subset."""
    every = [
        Scenario(
            "postgres down; slack answers 500 for the incident's first sweeps",
            _stopped("postgres"),
            sweeps=5,
            pages=("postgres",),
            refuse_first=SLACK,
        ),
        Scenario(
            "redis down; pagerduty down when the recovery comes",
            _stopped("redis"),
            sweeps=4,
            pages=("redis",),
            refuse_at_recovery=PAGER,
        ),
        Scenario("clickhouse down", _stopped("clickhouse"), sweeps=4, pages=("clickhouse",)),
        Scenario("litellm down", _stopped("litellm"), sweeps=4, pages=("litellm",)),
        Scenario(
            "langfuse answering 500", _langfuse("error500"), sweeps=4, pages=("langfuse-web",)
        ),
        Scenario("langfuse hanging", _langfuse("hang"), sweeps=4, pages=("langfuse-web",)),
        Scenario("litellm hanging (process frozen)", _frozen("litellm"), pages=("litellm",)),
        Scenario(
            "redis flapping (down every other sweep)",
            _flapping("redis", 4),
            sweeps=0,
            pages=("redis",),
            # The page goes out on a bad sweep: with an even threshold the last change it
            # needs is a recovery, so the sweep after it pages, (threshold + 1) sweeps after
            # the first one, which itself can start up to one interval after the fault.
            bound_sweeps=FLAP_THRESHOLD + 2,
        ),
        Scenario(
            "S3 stopped during a backup's upload",
            _s3_down_during_backup,
            sweeps=3,
            pages=("object-storage", "backup/failure"),
            after=_next_backup,
        ),
        # Nothing in the stack is wrong: no page; the sweeps must resume by themselves.
        Scenario("worker killed for 3 minutes", _stopped("prefect_worker"), hold_s=180.0),
        Scenario("prefect server restarted mid-sweep", _server_restarted_mid_sweep, sweeps=2),
        Scenario(
            "postgres down 4 minutes", _stopped("postgres"), hold_s=240.0, pages=("postgres",)
        ),
    ]
    if short:
        # The suite's game day: one incident with both channel faults in it.
        return [
            Scenario(
                "postgres down; slack answers 500 first, pagerduty down at the recovery",
                _stopped("postgres"),
                sweeps=5,
                pages=("postgres",),
                refuse_first=SLACK,
                refuse_at_recovery=PAGER,
            )
        ]
    return every
