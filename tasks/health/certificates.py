"""The public domains' TLS certificates: a real handshake with each (SNI, the public CAs
plus ``TLS_CA_FILE``), days until the certificate expires. The judge is
``tasks.decisions.certificates``."""

from __future__ import annotations

import socket
import ssl
import time
from functools import partial
from urllib.parse import urlsplit

import certifi

from blocks.stack import Stack
from tasks.decisions.certificates import CertificateReading, judge_certificates
from tasks.health.base import HealthThresholds, Reading, in_thread, reason_of

__all__ = ["check_certificates", "read_certificate"]


def read_certificate(url: str, timeout_s: float, ca_file: str | None) -> CertificateReading:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            cert = tls.getpeercert()
    except ssl.SSLCertVerificationError as exc:
        return CertificateReading(url=url, error=str(exc.verify_message or exc))
    except (OSError, ssl.SSLError) as exc:
        return CertificateReading(url=url, error=f"{type(exc).__name__}: {exc}")
    not_after = str((cert or {}).get("notAfter", ""))
    if not not_after:
        return CertificateReading(url=url, error="the server sent no certificate")
    days = (ssl.cert_time_to_seconds(not_after) - time.time()) / 86400
    return CertificateReading(url=url, days_left=days)


async def check_certificates(stack: Stack, timeout_s: float, th: HealthThresholds) -> Reading:
    readings = [
        await in_thread(partial(read_certificate, url, timeout_s, stack.tls_ca_file))
        for url in stack.public_urls
    ]
    readings = [
        r.model_copy(update={"error": reason_of(stack, r.error)}) if r.error else r
        for r in readings
    ]
    status, reason = judge_certificates(
        readings,
        degraded_days=th.certificate_degraded_days,
        unhealthy_days=th.certificate_unhealthy_days,
    )
    days = [r.days_left for r in readings if r.days_left is not None]
    if not days:
        return Reading(status, reason)
    return Reading(status, reason, {"certificate_days_left": round(min(days), 2)})
