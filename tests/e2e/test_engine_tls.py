"""TLS with client certificates on the intake: a client without a certificate signed by the configured
CA cannot even connect; one with it gets its alert queued."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from talon_opa.core import config
from tests.e2e.engine_harness import DRY_RUN_RULES, running_engine, shell_alert


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            b = b.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
    return b.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


async def test_intake_over_tls_requires_a_client_certificate(tmp_path: Path) -> None:
    ca_key = _key()
    ca = _cert("talon-opa test CA", ca_key, None, ca=True)
    server_key, client_key = _key(), _key()
    server_cert = _cert("127.0.0.1", server_key, (ca, ca_key), usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client_cert = _cert("falcosidekick", client_key, (ca, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    _write(tmp_path / "ca.pem", ca)
    _write(tmp_path / "server.pem", server_cert, server_key)
    _write(tmp_path / "client.pem", client_cert, client_key)
    tls = config.Tls(
        cert_file=str(tmp_path / "server.pem"),
        key_file=str(tmp_path / "server.key"),
        client_ca_file=str(tmp_path / "ca.pem"),
    )
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    client_ctx.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    async with running_engine(
        tmp_path, DRY_RUN_RULES, tls=tls, listen_address="127.0.0.1", connector=aiohttp.TCPConnector(ssl=client_ctx)
    ) as e:
        assert e.url.startswith("https://")
        reply = await e.post(json_body=shell_alert("tls-1"))
        assert reply.status == 200
        anonymous = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=anonymous)) as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.post(e.url + "/", json=shell_alert("tls-2")) as r:
                    await r.read()
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_events_total") == 1
