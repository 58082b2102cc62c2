"""ingestion-canary: how long a request through LiteLLM takes to become a readable trace.

Runs on its own period (deployment ``ingestion-canary/<stack>``, every 10 minutes): one
completion through LiteLLM with ``mock_response`` (no provider call, no tokens spent),
tagged ``ops-canary`` so dashboards can filter it out, then Langfuse polled for its trace
until readable or ``deadline_s``. The sample (seconds, or "never arrived") is appended to
the Variable ``ingestion-lag-<stack>`` (the last day); the health sweep's
``ingestion-lag`` probe judges the latest against thresholds and reports p50/p95 over the
day, so a late or dropped trace pages through the same alert machine as everything else.

The run completes whatever it measured: a lag is a reading of the stack, alerted by the
sweep, not a failure of this flow (which would page twice for one incident).
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, Field

from blocks.stack import Stack
from tasks.decisions.ingestion_lag import LagSample
from tasks.ingestion_canary import measure_ingestion_lag, record_lag_sample

__all__ = ["IngestionCanaryConfig", "ingestion_canary"]


class IngestionCanaryConfig(BaseModel):
    model: str = Field(
        default="canary", min_length=1, max_length=200, description="LiteLLM model name."
    )
    deadline_s: float = Field(
        default=540,
        gt=0,
        le=3600,
        description="How long to wait for the trace; not readable by then counts as never "
        "arrived. Below the period, so runs do not overlap.",
    )
    poll_s: float = Field(default=1.0, gt=0, le=60)
    request_timeout_s: float = Field(default=30.0, gt=0, le=300)


@flow(name="ingestion-canary", timeout_seconds=3900, persist_result=False)
def ingestion_canary(
    stack: str = "production", config: IngestionCanaryConfig | None = None
) -> LagSample:
    """Send a canary through LiteLLM, time its trace into Langfuse, keep the sample."""
    config = config or IngestionCanaryConfig()
    ops = Stack.load_stack(stack)
    sample = measure_ingestion_lag(
        ops,
        model=config.model,
        deadline_s=config.deadline_s,
        poll_s=config.poll_s,
        request_timeout_s=config.request_timeout_s,
    )
    record_lag_sample(ops.stack_name, sample)
    return sample
