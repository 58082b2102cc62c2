"""Which request goes where: the mock models, the share failing on purpose, the share streamed.

Pure and deterministic: shares are spread evenly over the request indices rather than
sampled, so after n requests exactly floor(n * share) were picked and a short run
still shows every kind.
"""

from __future__ import annotations

import math

__all__ = ["FAILING_MODEL", "OK_MODELS", "pick", "share_hit"]

OK_MODELS = ("gpt-4o-mini", "claude-3-haiku", "canary")
FAILING_MODEL = "flaky"


def share_hit(index: int, share: float) -> bool:
    """Whether request ``index`` belongs to a ``share`` of requests: spread evenly, so
    after n requests exactly floor(n * share) were picked (no sampling noise)."""
    return math.floor((index + 1) * share) > math.floor(index * share)


def pick(index: int, failing: int, *, fail_share: float, stream_share: float) -> tuple[str, bool]:
    """The model for request ``index`` and whether it streams, given that ``failing``
    earlier requests went to the failing model.

    The healthy requests rotate over ``OK_MODELS`` and take the streamed share among
    themselves: a request sent to fail is never streamed.
    """
    to_failing = share_hit(index, fail_share)
    ok_index = index - failing
    stream = not to_failing and share_hit(ok_index, stream_share)
    model = FAILING_MODEL if to_failing else OK_MODELS[ok_index % len(OK_MODELS)]
    return model, stream
