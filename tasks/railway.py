"""Tasks that ask Railway's public GraphQL API about the project's deployments.

One query lists the project's services with, per environment, the latest deployment
and its status (``SUCCESS``, ``FAILED``, ``CRASHED``, ``BUILDING``, ...). The token is
the stack block's ``railway_api_token`` (``RAILWAY_API_TOKEN``), sent as a bearer
token; the URL defaults to ``https://backboard.railway.com/graphql/v2``.
"""

from __future__ import annotations

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ValidationError

from blocks.stack import Stack
from tasks.decisions.checks import CheckResult, failed, skipped
from tasks.decisions.deploy_judges import RailwayService, judge_railway

__all__ = [
    "LATEST_DEPLOYMENTS_QUERY",
    "check_railway_deployments",
    "latest_statuses",
]

LATEST_DEPLOYMENTS_QUERY = """
query DeployVerifyLatestDeployments($projectId: String!) {
  project(id: $projectId) {
    services {
      edges {
        node {
          id
          name
          serviceInstances {
            edges { node { environmentId latestDeployment { id status createdAt } } }
          }
        }
      }
    }
  }
}
"""


class _Deployment(BaseModel):
    id: str
    status: str


class _Instance(BaseModel):
    environmentId: str
    latestDeployment: _Deployment | None = None


class _InstanceEdge(BaseModel):
    node: _Instance


class _Instances(BaseModel):
    edges: list[_InstanceEdge]


class _Service(BaseModel):
    id: str
    name: str
    serviceInstances: _Instances


class _ServiceEdge(BaseModel):
    node: _Service


class _Services(BaseModel):
    edges: list[_ServiceEdge]


class _Project(BaseModel):
    services: _Services


class _Data(BaseModel):
    project: _Project


class _Answer(BaseModel):
    data: _Data | None = None
    errors: list[dict[str, object]] | None = None


def latest_statuses(project: _Project, environment_id: str | None) -> list[RailwayService]:
    """One row per service: its latest deployment's status in the environment."""
    rows = []
    for edge in project.services.edges:
        instances = [
            i.node
            for i in edge.node.serviceInstances.edges
            if environment_id is None or i.node.environmentId == environment_id
        ]
        if not instances:
            continue
        deployments = [i.latestDeployment for i in instances]
        status = next((d.status for d in deployments if d is not None), None)
        rows.append(RailwayService(service=edge.node.name, status=status))
    return rows


@task(name="check-railway-deployments", cache_policy=NO_CACHE, persist_result=False)
def check_railway_deployments(stack: Stack, timeout_s: float) -> CheckResult:
    """Railway reports the latest deployment of every service as successful."""
    if stack.railway_api_token is None or not stack.railway_project_id:
        return skipped(
            "railway-deployments",
            "no Railway API token or project id in the stack block",
            fix="set RAILWAY_API_TOKEN (an account or workspace token) and RAILWAY_PROJECT_ID "
            "(and RAILWAY_ENVIRONMENT_ID) on the prefect-worker service to enable this check",
        )
    headers = {"Authorization": f"Bearer {stack.railway_api_token.get_secret_value()}"}
    try:
        response = httpx.post(
            stack.railway_api_url,
            json={
                "query": LATEST_DEPLOYMENTS_QUERY,
                "variables": {"projectId": stack.railway_project_id},
            },
            headers=headers,
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        return failed(
            "railway-deployments",
            f"Railway's API at {stack.railway_api_url} did not answer: {stack.error_line(exc)}",
            fix="retry later (Railway may be degraded), or check RAILWAY_API_URL",
        )
    if response.status_code in (401, 403):
        return failed(
            "railway-deployments",
            f"Railway's API refused the token (HTTP {response.status_code})",
            fix="create a new account or workspace token on Railway and set RAILWAY_API_TOKEN",
        )
    try:
        answer = _Answer.model_validate_json(response.content)
    except ValidationError:
        return failed(
            "railway-deployments",
            f"Railway's API answered HTTP {response.status_code} with an unexpected body",
            fix="check RAILWAY_API_URL points at Railway's GraphQL endpoint",
        )
    if answer.errors or answer.data is None:
        messages = "; ".join(str(e.get("message", e)) for e in answer.errors or [])
        shown = stack.error_line(messages, limit=300) or "no data"
        return failed(
            "railway-deployments",
            f"Railway's API answered with errors: {shown}",
            fix="check RAILWAY_PROJECT_ID, and that the token can read this project",
        )
    return judge_railway(latest_statuses(answer.data.project, stack.railway_environment_id))
