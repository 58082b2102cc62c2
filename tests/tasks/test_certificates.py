"""The certificate probe against real TLS endpoints on 127.0.0.1, with certificates made
for the test by a private CA: 10 days from expiry, 60 days, and one nobody trusts. The
probe runs for the devstack's stack while traffic flows through it, as in a sweep."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from blocks.stack import Stack
from tasks.health import HealthThresholds, run_checks

pytestmark = pytest.mark.usefixtures("traffic")


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def issue(folder: Path, days: int) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 it signs, valid ``days`` from now."""
    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(f"ops test CA {days}"))
        .issuer_name(_name(f"ops test CA {days}"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = folder / f"ca-{days}.pem", folder / f"cert-{days}.pem", folder / f"key-{days}.pem"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(leaf.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[object]:
    """Start TLS endpoints serving a certificate valid for ``days``; returns (url, ca)."""
    listeners: list[socket.socket] = []

    def start(days: int) -> tuple[str, str]:
        ca, cert, key = issue(tmp_path, days)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return  # closed at the end of the test
                try:
                    with context.wrap_socket(conn, server_side=True):
                        pass
                except (ssl.SSLError, OSError):
                    conn.close()  # a client that refused our certificate

        threading.Thread(target=serve, daemon=True).start()
        return f"https://127.0.0.1:{listener.getsockname()[1]}", str(ca)

    yield start
    for listener in listeners:
        listener.close()


def probe(stack: Stack) -> tuple[str, str]:
    found = asyncio.run(run_checks(stack, 5.0, ["certificates"], HealthThresholds()))[0]
    return found.status, found.reason


def test_certificates_near_expiry_are_degraded_and_untrusted_ones_unhealthy(
    tls_server: object, stack: Stack
) -> None:
    start = tls_server
    soon, ca_soon = start(10)  # type: ignore[operator]
    later, ca_later = start(60)  # type: ignore[operator]
    bundle = Path(ca_soon).parent / "bundle.pem"
    bundle.write_text(Path(ca_soon).read_text() + Path(ca_later).read_text())
    stack = stack.model_copy(update={"public_urls": [soon, later], "tls_ca_file": str(bundle)})
    status, reason = probe(stack)
    assert status == "degraded", reason
    assert reason.startswith(f"{soon}: certificate expires in 10 days: check the domain")
    assert reason.endswith(f"certificates valid: {later} 60 d")

    untrusted = stack.model_copy(update={"tls_ca_file": None, "public_urls": [later]})
    status, reason = probe(untrusted)
    assert status == "unhealthy"
    assert reason.startswith(f"{later}: TLS refused:") and "certificate" in reason

    healthy = stack.model_copy(update={"public_urls": [later]})
    assert probe(healthy) == ("healthy", f"certificates valid: {later} 60 d")


def test_no_public_url_watches_nothing_and_says_so(stack: Stack) -> None:
    assert not stack.public_urls
    assert probe(stack) == (
        "healthy",
        "no public URL configured (PUBLIC_URLS): no certificate watched",
    )
