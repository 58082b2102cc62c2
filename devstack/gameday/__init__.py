"""Game day: the whole control plane plays scripted incidents, and the pages are counted.

The real Prefect server (scheduler, automations), the real process worker and a
``health-sweep`` deployment on a fast interval sweep the devstack while traffic flows; each
scenario breaks something for real (a service stopped, an endpoint hanging or answering
500, a channel refusing), waits for the stack to recover and for the monitor to say so,
then reads what every channel accepted from the receiver stand-in:

- per channel: messages accepted, pages (PagerDuty triggers of kind alert or escalation),
  duplicates (a second opening trigger within one incident), lost (an incident the
  scenario expects that the pager never heard of), seconds from the fault to the first
  page;
- PagerDuty incidents left open (a trigger with no accepted resolve after it);
- the verdict: 0 lost, 0 duplicates, nothing left open, first page within
  ``(alert_after + 1) x interval``.

``bench/gameday.py`` plays every scenario and prints the table; the test suite plays a
short list. Waits are for the thing itself (a run, a record), each with a deadline.

Modules: ``day`` (the game day: its deployment, the waits, the counting), ``scenarios``
(the incidents it plays).
"""

from devstack.gameday.day import DEPLOYMENT, HEADER, GameDay, Outcome, Scenario
from devstack.gameday.scenarios import scenarios

__all__ = [
    "DEPLOYMENT",
    "HEADER",
    "GameDay",
    "Outcome",
    "Scenario",
    "scenarios",
]
