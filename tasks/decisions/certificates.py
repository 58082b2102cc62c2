"""The judge of the public domains' TLS certificates: days until each expires.

Railway renews the certificates of its own and custom domains; a renewal that fails (a
DNS record moved, a CAA record, a proxy in front) shows only when browsers and SDKs start
refusing. Pure: no Prefect, no I/O.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from tasks.decisions.health import STATUS_RANK, HealthStatus

__all__ = ["CertificateReading", "judge_certificates"]


class CertificateReading(BaseModel):
    model_config = ConfigDict(frozen=True)

    url: str
    days_left: float | None = None
    error: str | None = None


def judge_certificates(
    readings: list[CertificateReading], *, degraded_days: float, unhealthy_days: float
) -> tuple[HealthStatus, str]:
    if not readings:
        return "healthy", "no public URL configured (PUBLIC_URLS): no certificate watched"
    findings: list[tuple[HealthStatus, str]] = []
    fine: list[str] = []
    for r in readings:
        if r.error is not None or r.days_left is None:
            findings.append(("unhealthy", f"{r.url}: TLS refused: {r.error or 'no certificate'}"))
        elif r.days_left < max(degraded_days, unhealthy_days):
            status: HealthStatus = "unhealthy" if r.days_left < unhealthy_days else "degraded"
            findings.append(
                (
                    status,
                    f"{r.url}: certificate expires in {r.days_left:.0f} days: check the "
                    "domain's renewal (DNS still pointing at Railway, no CAA record refusing "
                    "its issuer)",
                )
            )
        else:
            fine.append(f"{r.url} {r.days_left:.0f} d")
    findings.sort(key=lambda f: -STATUS_RANK[f[0]])
    parts = [reason for _, reason in findings]
    if fine:
        parts.append("certificates valid: " + ", ".join(fine))
    return (findings[0][0] if findings else "healthy"), "; ".join(parts)
