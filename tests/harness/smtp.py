"""A real SMTP server on loopback (aiosmtpd, in its own thread): STARTTLS with a self-signed certificate
made here, AUTH PLAIN/LOGIN checked against one user, every message kept for the test to parse.

`ca_file` is the certificate to trust (tests point SSL_CERT_FILE at it, which Python's default TLS
context reads). `answer` changes what DATA replies (e.g. "554 5.7.1 rejected") to play a refusing server.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness.process import free_port


def self_signed(workdir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "talon-opa test smtp")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = workdir / "smtp-cert.pem", workdir / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool  # the session had done STARTTLS
    login: str  # the authenticated user, "" when none


@dataclass
class SmtpServer:
    workdir: Path
    user: str = "talon"
    password: str = "smtp-secret-7d21"
    answer: str = "250 OK"
    received: list[Received] = field(default_factory=list)
    port: int = 0
    ca_file: Path = field(default=Path(), init=False)
    _controller: Controller | None = field(default=None, init=False)

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        cert, key = self_signed(self.workdir)
        self.ca_file = cert
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
        self.port = free_port()
        self._controller = Controller(
            self,
            hostname="127.0.0.1",
            port=self.port,
            server_hostname="smtp.test",
            tls_context=tls,
            authenticator=self._authenticate,
            auth_required=False,
            auth_require_tls=False,
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == self.user
            and data.password.decode() == self.password
        )
        return AuthResult(success=ok, handled=False, auth_data=data)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not self.answer.startswith("250"):
            return self.answer
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        # as a mail client reads it: line ends as the platform's, folded headers unfolded
        message = BytesParser(policy=policy.default).parsebytes(content.replace(b"\r\n", b"\n"))
        assert isinstance(message, EmailMessage)
        auth = session.auth_data
        login = auth.login if session.authenticated and isinstance(auth, LoginPassword) else b""
        self.received.append(
            Received(str(envelope.mail_from), list(envelope.rcpt_tos), message, session.ssl is not None, login.decode())
        )
        return "250 OK"
