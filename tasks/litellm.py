"""Tasks that talk to the LiteLLM proxy: key enforcement, the model list, a canary request.

The canary is a real chat completion through the proxy. By default it carries
``mock_response``, so LiteLLM runs its whole request path (auth, routing, callbacks to
Langfuse) without calling a provider or spending tokens. Its ``metadata.trace_id`` is a
32-hex id unique to the run: LiteLLM's Langfuse callback keeps it as the trace id, so
the trace of exactly this request can be looked up afterwards.
"""

from __future__ import annotations

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel, ValidationError

from blocks.stack import Stack
from tasks.decisions.checks import CheckResult, failed
from tasks.decisions.deploy_judges import judge_canary, judge_models, judge_unauthenticated

__all__ = [
    "CANARY_PROMPT",
    "check_litellm_auth",
    "check_litellm_models",
    "post_canary",
    "send_canary_completion",
]

CANARY_PROMPT = "Reply with the single word: pong"


def _detail(stack: Stack, response: httpx.Response) -> str:
    """A short, scrubbed excerpt of an error body (LiteLLM explains refusals there)."""
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        text = str(error.get("message")) if isinstance(error, dict) else response.text
    except ValueError:
        text = response.text
    return stack.error_line(text, limit=200, lines="join")


def _unreachable(name: str, stack: Stack, exc: httpx.HTTPError) -> CheckResult:
    error = stack.error_line(exc)
    return failed(
        name,
        f"LiteLLM at {stack.litellm_url} did not answer: {error}",
        fix="check that the litellm service is running and LITELLM_URL points at it",
    )


@task(name="check-litellm-auth", cache_policy=NO_CACHE, persist_result=False)
def check_litellm_auth(stack: Stack, timeout_s: float) -> CheckResult:
    """A request without a key must be refused: an open proxy spends for anyone."""
    try:
        response = httpx.get(f"{stack.litellm_url}/v1/models", timeout=timeout_s)
    except httpx.HTTPError as exc:
        return _unreachable("litellm-auth", stack, exc)
    return judge_unauthenticated(response.status_code, stack.litellm_url)


class _Model(BaseModel):
    id: str


class _ModelList(BaseModel):
    data: list[_Model]


@task(name="check-litellm-models", cache_policy=NO_CACHE, persist_result=False)
def check_litellm_models(stack: Stack, canary_model: str, timeout_s: float) -> CheckResult:
    """The master key is accepted and the canary model is configured."""
    headers = {"Authorization": f"Bearer {stack.litellm_master_key.get_secret_value()}"}
    try:
        response = httpx.get(f"{stack.litellm_url}/v1/models", headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return _unreachable("litellm-models", stack, exc)
    if not response.is_success:
        return judge_models(response.status_code, [], canary_model, _detail(stack, response))
    try:
        models = [m.id for m in _ModelList.model_validate_json(response.content).data]
    except ValidationError:
        return failed(
            "litellm-models",
            f"{stack.litellm_url}/v1/models did not answer an OpenAI model list",
            fix="check that LITELLM_URL points at the LiteLLM proxy, not another service",
        )
    return judge_models(response.status_code, models, canary_model)


def post_canary(
    stack: Stack,
    *,
    model: str,
    trace_id: str,
    tags: list[str],
    generation_name: str,
    mock: bool,
    timeout_s: float,
) -> httpx.Response:
    """One canary chat completion tagged with ``trace_id`` (``mock``: LiteLLM answers
    itself, no provider call, no tokens). Raises httpx errors; never retried."""
    payload: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": CANARY_PROMPT}],
        "max_tokens": 5,
        "metadata": {"trace_id": trace_id, "tags": tags, "generation_name": generation_name},
    }
    if mock:
        payload["mock_response"] = "pong"
    headers = {"Authorization": f"Bearer {stack.litellm_master_key.get_secret_value()}"}
    return httpx.post(
        f"{stack.litellm_url}/v1/chat/completions",
        json=payload,
        headers=headers,
        timeout=timeout_s,
    )


@task(name="send-canary-completion", cache_policy=NO_CACHE, persist_result=False)
def send_canary_completion(
    stack: Stack,
    model: str,
    trace_id: str,
    tags: list[str],
    mock: bool,
    timeout_s: float,
) -> CheckResult:
    """One chat completion tagged with ``trace_id``; never retried (it could spend twice)."""
    get_run_logger().info("canary completion on %r, trace id %s", model, trace_id)
    try:
        response = post_canary(
            stack,
            model=model,
            trace_id=trace_id,
            tags=tags,
            generation_name="deploy-verify",
            mock=mock,
            timeout_s=timeout_s,
        )
    except httpx.HTTPError as exc:
        return _unreachable("litellm-canary", stack, exc)
    if not response.is_success:
        return judge_canary(response.status_code, None, model, _detail(stack, response))
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        content = None
    return judge_canary(response.status_code, str(content) if content else None, model)
