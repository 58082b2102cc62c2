"""A short game day: the real scheduler and worker sweep the stack while it breaks.

A scripted incident with a channel refusing at each of the worst moments, played
through a ``health-sweep`` deployment on a 10-second interval while traffic flows
(``devstack/gameday/``; ``bench/gameday.py`` plays every scenario). Each must end
with every page delivered once and every PagerDuty incident resolved. The seconds to
the first page are printed, not asserted (the suite shares the machine with everything
else): ``bench/gameday.py`` measures them against (alert_after + 1) x interval.
"""

from __future__ import annotations

from typing import Any

import pytest

from devstack.core import Devstack
from devstack.gameday import GameDay, scenarios

pytestmark = [
    pytest.mark.usefixtures("traffic"),
    # The stack's Postgres stopped on purpose: the worker's flow runs log it.
    pytest.mark.prefect_log_allows(r"(?i)connection (refused|failed)|could not connect"),
]


@pytest.fixture(scope="module")
def day(devstack: Devstack) -> Any:
    with GameDay(devstack, interval_s=10.0, alert_after=2, recover_after=2) as game:
        yield game


@pytest.mark.parametrize("scenario", scenarios(short=True), ids=lambda s: s.name)
def test_every_page_once_and_every_incident_resolved(day, scenario) -> None:  # type: ignore[no-untyped-def]
    outcome = day.play(scenario)
    print(outcome.row())
    assert outcome.lost == [], outcome.row()
    assert outcome.duplicates == 0, outcome.row()
    assert outcome.left_open == [], outcome.row()
    assert outcome.pages >= len(scenario.pages), outcome.row()
    assert outcome.first_page_s is not None, outcome.row()  # it was paged
    assert outcome.accepted["/slack"] >= 2, outcome.row()  # the alert and the recovery
