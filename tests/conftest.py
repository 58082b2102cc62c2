"""Session fixtures: one real devstack on 127.0.0.1 for the whole test session.

The stack is the same one ``python -m devstack up`` runs for the demo, in its own
state folder (``.devstack-test``), started fresh for each session unless
``DEVSTACK_REUSE=1`` (handy while iterating on one test). The Prefect settings point
this process at the devstack's Prefect server before Prefect is imported, so flows
called from tests run against a real server, not the ephemeral one.
"""

from __future__ import annotations

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
settings.register_profile("ops", deadline=None)
settings.load_profile("ops")

TEST_ROOT = Path(os.environ.get("DEVSTACK_TEST_DIR", PROJECT / ".devstack-test"))

if not os.environ.get("DEVSTACK_REUSE") and TEST_ROOT.exists():
    Devstack(TEST_ROOT, log=lambda _m: None).down()
    shutil.rmtree(TEST_ROOT, ignore_errors=True)

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
    # Read after the stop, so errors of the last tests' aftermath (automation actions,
    # event recording) are in the logs too.
    if not os.environ.get("DEVSTACK_KEEP"):
        _DEVSTACK.down()
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
