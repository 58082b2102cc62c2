"""One run per stack at a time: global concurrency slots (limit 1) in the Prefect API.

The deployments' own concurrency limits keep scheduled runs apart; a slot also covers
runs started another way (a second deployment, a direct call, a drill run inside a
backup). The run creates its limit first (:func:`create_slot`), and ``strict`` makes
a missing limit an error instead of a silent no-op. A lease that cannot be renewed
(the Prefect server restarting during a long dump) does not cancel the run; a holder
that dies frees the slot when its lease ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

__all__ = ["create_slot", "hold_slot"]


def create_slot(name: str) -> str:
    """Create the global concurrency limit ``name`` (limit 1) if it is missing.

    Plain function: each caller wraps it in a task of its own name, with retries.
    """
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
    return name


@contextlib.contextmanager
def hold_slot(name: str, wait_s: float, *, lease_s: float = 300) -> Iterator[None]:
    """Hold the slot ``name`` for the block; TimeoutError after ``wait_s`` without it.

    ``lease_s`` (60 at least, the server's floor) is how long a holder killed outright
    keeps the slot from the next run.
    """
    with concurrency(
        name,
        occupy=1,
        timeout_seconds=wait_s,
        lease_duration=lease_s,
        strict=True,
        raise_on_lease_renewal_failure=False,
    ):
        yield
