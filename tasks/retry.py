"""When a failed task is worth retrying: transient trouble, not a wrong setup.

Used as ``retry_condition_fn`` on tasks whose work is idempotent. A connection that
dropped, a timeout or an S3 hiccup may pass; a pg_dump that is too old, a stack block
that is wrong or a retention plan that broke an invariant will fail the same way
again, so those fail at once.
"""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import INPUTS, RUN_ID, TASK_SOURCE

from tasks.errors import (
    IntegrityError,
    RetentionError,
    StackConfigError,
    ToolVersionError,
)

PERMANENT: tuple[type[BaseException], ...] = (
    StackConfigError,
    ToolVersionError,
    RetentionError,
    IntegrityError,
    TypeError,
    ValueError,
)


def is_transient(exc: BaseException) -> bool:
    """True unless the error is one a retry cannot fix."""
    return not isinstance(exc, PERMANENT)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only transient failures."""
    try:
        state.result()
    except BaseException as exc:  # the task's own exception, re-raised by result()
        return is_transient(exc)
    return False


# A retried flow run (UI "Retry", `prefect flow-run retry`, same flow-run id) reuses
# the persisted result of every task that completed before: the key is the run id,
# the task's code and its inputs. The stack block is left out of the key: fixing a
# setting in the block (a wrong endpoint that made the run fail) must not redo a
# finished dump. Progress hints are left out too.
RUN_CACHE = (INPUTS - "stack" - "expected_bytes") + TASK_SOURCE + RUN_ID
