"""prefect.yaml and deployments/settings.py describe the same deployments and schedules."""

from __future__ import annotations

from typing import Any

import yaml

from deployments.settings import FLOWS, PREFECT_FILE, SCHEDULES


def _deployments() -> list[dict[str, Any]]:
    return list(yaml.safe_load(PREFECT_FILE.read_text())["deployments"])


def test_every_flow_is_deployed_once_from_its_entrypoint() -> None:
    entrypoints = sorted(d["entrypoint"] for d in _deployments())
    assert entrypoints == sorted(FLOWS.values())


def test_each_schedule_slug_and_active_variable_match_what_the_bootstrap_keeps_paused() -> None:
    by_entrypoint = {d["entrypoint"]: d for d in _deployments()}
    for flow, spec in SCHEDULES.items():
        schedules = by_entrypoint[FLOWS[flow]].get("schedules") or []
        assert [s["slug"] for s in schedules] == [spec.slug], flow
        assert schedules[0]["active"] == "{{ $" + spec.active_variable + " }}", flow
