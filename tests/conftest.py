"""Session fixtures: one real devstack on 127.0.0.1 for the whole test session.

The stack is the same one ``python -m devstack up`` runs for the demo, in a state
folder of its own per session (``.devstack-test/s<pid>``, locked while the session
runs), started fresh unless ``DEVSTACK_REUSE=1`` (``.devstack-test/reuse``, handy while
iterating on one test). The Prefect settings point
this process at the devstack's Prefect server before Prefect is imported, so flows
called from tests run against a real server, not the ephemeral one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import settings

from devstack.core import PROJECT, Devstack
from tests import prefect_logs

# Hypothesis's per-example deadline is a timed assertion: the first example of a test
# pays for imports, and the suite shares two cores with the devstack. Speed is measured
# in bench/, never asserted.
# Derandomized: every run tries the same examples, so the suite's verdict never depends on
# luck (a property that fails now and then would block everyone). To search further for
# counterexamples, run with HYPOTHESIS_PROFILE=explore (random, 10x the examples).
settings.register_profile("ops", deadline=None, derandomize=True)
settings.register_profile("explore", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ops"))

# Each session runs its own devstack in its own folder under the test base, and holds a
# lock on it while it runs; a session removes only the folders whose lock nobody holds
# (their session ended or died), never the stack of a suite running beside it.
TEST_BASE = Path(os.environ.get("DEVSTACK_TEST_DIR", PROJECT / ".devstack-test"))
_REUSE = bool(os.environ.get("DEVSTACK_REUSE"))
TEST_ROOT = TEST_BASE / ("reuse" if _REUSE else f"s{os.getpid()}")
_LOCK_NAME = "session.lock"


def _try_lock(folder: Path) -> int | None:
    """A file descriptor holding ``folder``'s session lock, or None when a session holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _remove_ended_sessions(base: Path) -> None:
    if not base.is_dir():
        return
    for folder in sorted(base.iterdir()):
        if not folder.is_dir() or folder == TEST_ROOT or not (folder / _LOCK_NAME).exists():
            continue
        fd = _try_lock(folder)
        if fd is None:
            continue  # a running session's stack
        try:
            Devstack(folder, log=lambda _m: None).down()
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)


_remove_ended_sessions(TEST_BASE)
_SESSION_LOCK = _try_lock(TEST_ROOT)
if _SESSION_LOCK is None:
    raise pytest.UsageError(
        f"{TEST_ROOT} is in use by another test session (DEVSTACK_REUSE=1 shares one folder): "
        "wait for it, or run without DEVSTACK_REUSE"
    )
if not _REUSE:
    # A new session starts fresh (a reused pid's folder would hold a dead stack's state).
    Devstack(TEST_ROOT, log=lambda _m: None).down()
    for leftover in TEST_ROOT.iterdir():
        if leftover.name != _LOCK_NAME:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink()

_DEVSTACK = Devstack(TEST_ROOT, log=lambda _m: None)
for _key, _value in _DEVSTACK.client_env().items():
    if _key.startswith("PREFECT_"):
        os.environ[_key] = _value


class Receiver:
    """Client for the webhook receiver stand-in (it records every POST it gets)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def clear(self) -> None:
        httpx.delete(f"{self.url}/__received", timeout=5).raise_for_status()
        httpx.delete(f"{self.url}/__fail", timeout=5)

    def received(self, path_prefix: str = "") -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.url}/__received",
            params={"path_prefix": path_prefix} if path_prefix else {},
            timeout=5,
        )
        response.raise_for_status()
        return list(response.json())

    def fail(self, path_prefix: str, status: int = 500) -> None:
        httpx.post(
            f"{self.url}/__fail", json={"path_prefix": path_prefix, "status": status}, timeout=5
        ).raise_for_status()


# Patterns of Prefect server/worker log errors that the tests which ran declared.
_ALLOWED_PREFECT_LOG_ERRORS: list[str] = []
_PREFECT_LOGS = ("prefect_server", "prefect_worker")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "prefect_log_allows(*patterns): errors this test causes on purpose in the Prefect "
        "server's or worker's log (regular expressions)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("prefect_log_allows"):
        _ALLOWED_PREFECT_LOG_ERRORS.extend(marker.args)


@pytest.fixture(scope="session")
def devstack() -> Iterator[Devstack]:
    logs = [_DEVSTACK.root / "logs" / f"{name}.log" for name in _PREFECT_LOGS]
    offsets = prefect_logs.sizes(logs)
    _DEVSTACK.up(with_worker=True)
    yield _DEVSTACK
    # A service that crashed during the session fails it, with the end of its log (a
    # crash shows in the tests that follow only as refused connections).
    died = _DEVSTACK.died()
    # Read after the stop, so errors of the last tests' aftermath (automation actions,
    # event recording) are in the logs too.
    if not os.environ.get("DEVSTACK_KEEP"):
        _DEVSTACK.down()
    if died:
        report = "\n\n".join(f"{name} died; {tail}" for name, tail in died.items())
        pytest.fail(f"devstack services ended during the session, not stopped by a test:\n{report}")
    found = {
        path.name: problems
        for path, text in prefect_logs.read_since(offsets).items()
        if (problems := prefect_logs.problems(text, _ALLOWED_PREFECT_LOG_ERRORS))
    }
    if found:
        report = "\n\n".join(
            f"{name}: {len(problems)} unexpected error(s); the first:\n{problems[0][:3000]}"
            for name, problems in found.items()
        )
        pytest.fail(f"the Prefect server or worker logged errors no test expected:\n{report}")
    if not _REUSE and not os.environ.get("DEVSTACK_KEEP"):
        shutil.rmtree(TEST_ROOT, ignore_errors=True)  # kept when the logs hold errors


@pytest.fixture(scope="session")
def stack_env(devstack: Devstack) -> dict[str, str]:
    return devstack.env()


@pytest.fixture(scope="session")
def stack(devstack: Devstack):  # type: ignore[no-untyped-def]
    from blocks.stack import Stack

    return Stack.from_env(devstack.env(), stack_name="devstack")


@pytest.fixture
def receiver(devstack: Devstack) -> Iterator[Receiver]:
    client = Receiver(devstack.receiver_url)
    client.clear()
    yield client
    client.clear()


# Requests per second through LiteLLM while backup, drill and restore tests run: the
# stack keeps moving under them as a live one does (the acceptance test in
# tests/flows/test_under_traffic.py drives 20/s; here a lighter load keeps the suite short).
SUITE_TRAFFIC_RATE = 5.0


@pytest.fixture(scope="module")
def traffic(devstack: Devstack) -> Iterator[Any]:
    """Traffic through the real stack for a whole test module, checked when it stops.

    Requests flow before the module's first test starts; at the end every failure must
    be one injected on purpose (a test that stops Postgres or ClickHouse costs spend-log
    or trace writes, never a LiteLLM request).
    """
    from devstack.traffic import flowing

    with flowing(devstack, SUITE_TRAFFIC_RATE) as running:
        yield running
    report = running.report()
    assert report.unexpected == 0, report.summary()
    assert report.failed_on_purpose == report.sent_to_failing, report.summary()
