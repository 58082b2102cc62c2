"""ingestion-canary against the devstack, with traffic flowing: the lag measured through
the real LiteLLM proxy into the Langfuse stand-in's queue, and the sweep's ingestion-lag
probe judging it when ingestion is slowed or drops traces for real."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prefect.variables import Variable

from devstack.core import Devstack
from flows.ingestion_canary import IngestionCanaryConfig, ingestion_canary
from tasks.decisions.health import ServiceHealth
from tasks.health import HealthThresholds, run_checks
from tasks.ingestion_canary import lag_variable

pytestmark = pytest.mark.usefixtures("traffic")

STACK = "devstack"
# The judge's thresholds are not the machine's speed: "healthy" is asked with a limit no
# loaded CI machine reaches, "degraded" only of a trace the worker holds for 5 s.
PROMPT_S = 30.0
HELD_S = 5.0


def lag_probe(stack: Any, degraded_s: float = PROMPT_S) -> ServiceHealth:
    limits = HealthThresholds(
        litellm_requires_db=False, ingestion_lag_degraded_s=degraded_s, ingestion_lag_unhealthy_s=60
    )
    return asyncio.run(run_checks(stack, 5.0, ["ingestion-lag"], limits))[0]


@pytest.fixture
def fault(devstack: Devstack) -> Iterator[Callable[..., None]]:
    """Set a fault on the Langfuse stand-in's web or worker; both reset afterwards."""

    def set_fault(role: str, mode: str, **extra: float) -> None:
        url = devstack.url("langfuse" if role == "web" else "langfuse_worker")
        response = httpx.post(f"{url}/__standin/fault", json={"mode": mode, **extra}, timeout=10)
        response.raise_for_status()

    Variable.unset(lag_variable(STACK))
    yield set_fault
    set_fault("web", "ok")
    set_fault("worker", "ok")
    Variable.unset(lag_variable(STACK))


def test_the_canary_is_timed_into_langfuse_and_tagged(
    stack: Any, devstack: Devstack, fault: Any
) -> None:
    sample = ingestion_canary(stack=STACK, config=IngestionCanaryConfig(deadline_s=60))
    assert sample.lag_s is not None and sample.error is None
    stored = Variable.get(lag_variable(STACK))
    assert isinstance(stored, list) and len(stored) == 1
    found = lag_probe(stack)
    assert found.status == "healthy"
    assert found.reason.startswith(f"latest canary readable after {sample.lag_s:.1f} s; p50")
    # Tagged, so dashboards can leave canaries out.
    tagged = httpx.get(
        f"{devstack.url('langfuse')}/api/public/traces",
        params={"tags": "ops-canary"},
        auth=(devstack.creds.langfuse_public_key, devstack.creds.langfuse_secret_key),
        timeout=10,
    ).json()["data"]
    assert tagged, "no trace carries the ops-canary tag"


def test_ingestion_held_back_is_degraded_and_dropped_is_unhealthy(
    stack: Any, fault: Callable[..., None]
) -> None:
    fault("worker", "delay", hold_s=HELD_S)  # the worker stores each job once 5 s old
    held = ingestion_canary(stack=STACK, config=IngestionCanaryConfig(deadline_s=60))
    assert held.lag_s is not None and held.lag_s >= HELD_S
    found = lag_probe(stack, degraded_s=HELD_S - 2)
    assert found.status == "degraded", found
    assert "traces arrive late; check langfuse-worker's queues" in found.reason

    fault("worker", "ok")
    fault("web", "drop_ingestion")  # answered, never queued: langfuse#16112
    dropped = ingestion_canary(stack=STACK, config=IngestionCanaryConfig(deadline_s=8))
    assert dropped.lag_s is None and dropped.error is None
    found = lag_probe(stack)
    assert found.status == "unhealthy", found
    assert found.reason.startswith("the latest canary trace never became readable")
    assert "1 never arrived" in found.reason

    fault("web", "ok")
    ingestion_canary(stack=STACK, config=IngestionCanaryConfig(deadline_s=60))
    assert lag_probe(stack).status == "healthy"
