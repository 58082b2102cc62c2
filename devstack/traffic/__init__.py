"""Continuous traffic through the devstack, the way applications drive the real stack.

A stack that only holds seed data hides what production meets: rows arriving while a
backup runs, ReplacingMergeTree duplicates not yet merged, a spend table that grows
under a restore. ``Traffic`` keeps the devstack busy in the three ways a deployment is:

- **chat completions through the real LiteLLM proxy**, open-loop at ``rate`` per second
  (the schedule does not wait for answers; at most ``concurrency`` in flight), spread
  over the mock models, a share streamed (read to ``[DONE]``) and a share sent on purpose
  to ``flaky``, which always fails. LiteLLM's ``langfuse`` callback turns each success
  into traces in the Langfuse stand-in, which writes them on to ClickHouse;
- **direct Langfuse ingestion** at a lower rate: new traces, updates of earlier ones and
  scores (some re-sent under the same id), so upserts of existing ids keep landing;
- **LiteLLM's spend-log writes in Postgres**: one INSERT per request into
  ``"LiteLLM_SpendLogs"`` (only the columns the table has: the schema follows LiteLLM's
  migrations) and an upsert into ``"LiteLLM_DailyUserSpend"`` when that table exists.
  The devstack's LiteLLM runs without a database, so these are written here.

    with Traffic(devstack, rate=25, stream_share=0.2, fail_share=0.05) as traffic:
        traffic.wait_for(requests=200, timeout_s=60)
        print(traffic.report().summary())

``python -m devstack traffic --rate R --duration S`` runs it from the shell.

One module per concept: ``schedule`` (which request goes where), ``litellm`` (the
requests), ``langfuse`` (the direct ingestion), ``spend`` (the Postgres rows),
``report`` (the counts), ``runner`` (``Traffic``, its thread and loop), ``cli``.
"""

from __future__ import annotations

from devstack.traffic.cli import run_traffic
from devstack.traffic.report import TrafficReport
from devstack.traffic.runner import Traffic, flowing
from devstack.traffic.schedule import FAILING_MODEL, OK_MODELS
from devstack.traffic.spend import SpendLogRow

__all__ = [
    "FAILING_MODEL",
    "OK_MODELS",
    "SpendLogRow",
    "Traffic",
    "TrafficReport",
    "flowing",
    "run_traffic",
]
