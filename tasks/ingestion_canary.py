"""The ingestion canary: one tokenless completion through LiteLLM, tagged so people can
filter it out, and the seconds until its trace is readable in Langfuse; the samples kept
in the control plane (the Variable ``ingestion-lag-<stack>``), judged by
``tasks.decisions.ingestion_lag``."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.variables import Variable

from blocks.stack import Stack
from tasks.decisions.ingestion_lag import CANARY_TAG, LagSample, trim
from tasks.litellm import post_canary

__all__ = ["lag_variable", "measure_ingestion_lag", "read_lag_samples", "record_lag_sample"]


def lag_variable(stack: str) -> str:
    return f"ingestion-lag-{stack}"


def _send(stack: Stack, model: str, trace_id: str, timeout_s: float) -> str | None:
    """The canary completion (``mock_response``: no provider call, no tokens); an error
    line when LiteLLM did not answer 2xx."""
    try:
        response = post_canary(
            stack,
            model=model,
            trace_id=trace_id,
            tags=[CANARY_TAG],
            generation_name="ingestion-canary",
            mock=True,
            timeout_s=timeout_s,
        )
    except httpx.HTTPError as exc:
        return stack.error_line(exc, limit=200, lines="first")
    if not response.is_success:
        return stack.error_line(f"LiteLLM answered HTTP {response.status_code}", limit=200)
    return None


@task(name="measure-ingestion-lag", cache_policy=NO_CACHE, persist_result=False)
def measure_ingestion_lag(
    stack: Stack, *, model: str, deadline_s: float, poll_s: float, request_timeout_s: float
) -> LagSample:
    """Send the canary, then poll Langfuse for its trace until readable or ``deadline_s``."""
    logger = get_run_logger()
    trace_id = uuid.uuid4().hex
    at = datetime.now(UTC)
    started = time.monotonic()
    error = _send(stack, model, trace_id, request_timeout_s)
    if error is not None:
        logger.warning("canary not sent: %s", error)
        return LagSample(at=at, error=error)
    auth = (stack.langfuse_public_key, stack.langfuse_secret_key.get_secret_value())
    url = f"{stack.langfuse_url}/api/public/traces/{trace_id}"
    with httpx.Client(auth=auth, timeout=request_timeout_s) as client:
        while True:
            try:
                found = client.get(url).is_success
            except httpx.HTTPError as exc:
                logger.info("trace lookup failed, retrying: %s", stack.error_line(exc))
                found = False
            if found:
                lag = round(time.monotonic() - started, 2)
                logger.info("canary trace %s readable after %.2f s", trace_id, lag)
                return LagSample(at=at, lag_s=lag)
            if time.monotonic() - started + poll_s > deadline_s:
                break
            time.sleep(poll_s)  # polling an external system: Langfuse ingests asynchronously
    logger.warning("canary trace %s not readable within %g s", trace_id, deadline_s)
    return LagSample(at=at)


async def read_lag_samples(stack: str) -> list[LagSample]:
    return _samples(await Variable.aget(lag_variable(stack), default=None))


def _samples(raw: Any) -> list[LagSample]:
    if not isinstance(raw, list):
        return []
    samples: list[LagSample] = []
    for item in raw:
        try:
            samples.append(LagSample.model_validate(item))
        except ValueError:
            continue  # a sample this version cannot read is dropped, not fatal
    return samples


@task(name="record-lag-sample", cache_policy=NO_CACHE, persist_result=False)
def record_lag_sample(stack: str, sample: LagSample) -> list[LagSample]:
    """Append the sample; keep the last day, within the Variable's size limit. One canary
    run per stack at a time (the deployment's concurrency limit): no lost update."""
    before = _samples(Variable.get(lag_variable(stack), default=None))
    kept = trim([*before, sample], datetime.now(UTC))
    Variable.set(lag_variable(stack), [s.model_dump(mode="json") for s in kept], overwrite=True)
    return kept
