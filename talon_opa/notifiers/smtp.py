"""smtp — e-mail each result: a plain-text part, and (format html, the default) an HTML part beside it.

Talon's HTML mail never sends (its template does not parse) and would lack a Subject; here both formats
send a well-formed MIME message with From, To, Date, Subject and Message-ID, the HTML escapes every value,
and both parts carry the trace id (also in the `X-Falco-Talon-Trace-Id` header). Talon authenticates with
SASL PLAIN even without credentials; here only when `user` is set.
"""

from __future__ import annotations

import asyncio
import email.utils
import html
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, ClassVar

from talon_opa.core.backoff import Backoff
from talon_opa.notifiers import _http
from talon_opa.plugins.params import Bad, Decoding, one_of, param
from talon_opa.plugins.runtime import Notifier
from talon_opa.plugins.spec import Spec

if TYPE_CHECKING:
    from talon_opa.plugins.notes import Note

TIMEOUT = 10.0  # seconds, each network operation of one attempt
TRACE_HEADER = "X-Falco-Talon-Trace-Id"
COLORS = {"success": "#23ba47", "failure": "#e20b0b", "ignored": "#a4a8b1", "pending": "#f2c744"}  # Talon's + amber


def split_host_port(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); ValueError when it is not that shape."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(value)
    return host.removeprefix("[").removesuffix("]"), int(port)


def _host_port(value: Any) -> Iterable[Bad]:
    try:
        split_host_port(value)
    except ValueError:
        yield Bad(f"{value!r} is not host:port", "write e.g. smtp.example.com:587")


def recipients(to: str) -> list[str]:
    """Talon's comma-separated `to`, spaces removed."""
    return [r for r in to.replace(" ", "").split(",") if r]


def subject(note: Note) -> str:
    """`[falco-talon][<status>][<stage>] OutputTarget 't' Action 'a' Rule 'r'` (the parts that are set)."""
    parts = [f"[falco-talon][{note.status}][{note.message}]"]
    for title, value in (("OutputTarget", note.output_target), ("Action", note.action), ("Rule", note.rule)):
        if value:
            parts.append(f"{title} '{value}'")
    return " ".join(parts)


def rows(note: Note) -> list[tuple[str, str]]:
    """The (title, value) lines of both parts, in Talon's order."""
    out = [("Status", note.status), ("Action", note.action), ("Actionner", note.actionner), ("Rule", note.rule)]
    out += [("Event", note.event), ("Message", note.message)]
    objects = note.titled_objects()
    out += [(key, objects[key]) for key in sorted(objects)]
    out.append(("Trace ID", note.trace_id))
    out += [(t, v) for t, v in (("Error", note.error), ("OutputTarget", note.output_target)) if v]
    return out


def text_body(note: Note) -> str:
    lines = [f"{title}: {value}" for title, value in rows(note)]
    if note.output:
        lines += ["Output:", note.output]
    return "\n".join(lines) + "\n"


def html_body(note: Note) -> str:
    """A table like Talon's (a coloured status bar, one row per field); every value HTML-escaped."""
    e = html.escape
    cell = 'style="background-color:#858585;color:#fff;font-weight:bold;font-size:14px;padding:5px"'
    value_cell = 'style="background-color:#d1d6da;padding:5px"'
    trs = [f"<tr><td {cell}>{e(t)}</td><td {value_cell}>{e(v)}</td></tr>" for t, v in rows(note)]
    if note.output:
        trs.append(f"<tr><td {cell}>Output</td><td {value_cell}><pre>{e(note.output)}</pre></td></tr>")
    color = COLORS.get(note.status, "#858585")
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
        f"{e(subject(note))}</title></head>\n"
        '<body style="font-family:arial,helvetica,sans-serif;font-size:13px">\n'
        f'<table cellspacing="0" style="width:800px"><tr><td style="background-color:{color};color:#fff;'
        f'text-align:center;font-size:12px;padding:3px"><strong>{e(note.status)}</strong></td></tr></table>\n'
        '<table cellspacing="0" style="width:800px">\n' + "\n".join(trs) + "\n</table>\n</body></html>\n"
    )


def message(note: Note, settings: SmtpSettings) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = settings.from_
    msg["To"] = ", ".join(recipients(settings.to))
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Subject"] = subject(note)
    domain = settings.from_.rpartition("@")[2].strip("<> ") or None
    msg["Message-ID"] = email.utils.make_msgid(domain=domain)
    if note.trace_id:
        msg[TRACE_HEADER] = note.trace_id
    msg.set_content(text_body(note))
    if settings.format == "html":
        msg.add_alternative(html_body(note), subtype="html")
    return msg


def _retried(e: Exception) -> bool:
    """A connection problem or a transient (4xx) answer; never a refusal (5xx, bad credentials)."""
    import aiosmtplib

    if isinstance(e, aiosmtplib.SMTPResponseException):
        return 400 <= e.code < 500
    if isinstance(e, ssl.SSLError):
        return False  # an untrusted certificate stays untrusted
    return isinstance(e, OSError | TimeoutError)  # connect, disconnect and timeout errors are OSErrors


@dataclass(frozen=True, kw_only=True, slots=True)
class SmtpSettings:
    decoding: ClassVar[Decoding] = "settings"

    host_port: str = param(doc="server as host:port", required=True, check=_host_port)
    from_: str = param(doc="sender address", required=True, key="from")
    to: str = param(doc="recipients, comma-separated", required=True)
    user: str = param("", doc="SASL user (no authentication when empty)")
    password: str = param("", doc="SASL password", secret=True)
    format: str = param("html", doc="html (text and HTML parts) or text", check=one_of("html", "text"))
    tls: bool = param(False, doc="require STARTTLS (TLS 1.2 or later, certificate checked against the system CAs)")


class Smtp(Notifier[SmtpSettings]):
    spec: ClassVar[Spec[SmtpSettings]] = Spec(
        name="smtp",
        kind="notifier",
        description="E-mail each action and output result: a plain-text and an HTML part, both with the trace id",
        params=SmtpSettings,
        example="""\
notifiers:
  smtp:
    host_port: smtp.example.com:587
    from: talon@example.com
    to: secops@example.com, oncall@example.com
    user: talon
    password: s3cret
    format: html
    tls: true
""",
    )

    attempts: ClassVar[int] = _http.ATTEMPTS

    async def notify(self, note: Note) -> None:
        import aiosmtplib  # here, not at start-up: only an engine that sends e-mail needs it

        s = self.settings
        host, port = split_host_port(s.host_port)
        msg = message(note, s)
        backoff = Backoff(_http.BACKOFF)
        while True:
            try:
                await self._send(msg, host, port)
                return
            except asyncio.CancelledError:
                raise
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
                retry = _retried(e)
                if not retry or backoff.attempt >= self.attempts:
                    tries = f" (attempt {backoff.attempt} of {self.attempts})" if retry else ""
                    raise _http.SendFailed(f"smtp {s.host_port}: {type(e).__name__}: {e}{tries}", hint=_hint(e)) from e
            await backoff.sleep()

    async def _send(self, msg: EmailMessage, host: str, port: int) -> None:
        import aiosmtplib

        s = self.settings
        context: ssl.SSLContext | None = None
        if s.tls:
            context = ssl.create_default_context()
            context.minimum_version = ssl.TLSVersion.TLSv1_2
        await aiosmtplib.send(
            msg,
            sender=s.from_,
            recipients=recipients(s.to),
            hostname=host,
            port=port,
            username=s.user or None,
            password=(s.password if s.user else None),
            start_tls=s.tls,
            use_tls=False,
            tls_context=context,
            timeout=TIMEOUT,
        )


def _hint(e: Exception) -> str:
    import aiosmtplib

    if isinstance(e, aiosmtplib.SMTPAuthenticationError):
        return "the server refused the credentials: check notifiers.smtp.user and password"
    if isinstance(e, aiosmtplib.SMTPNotSupported):
        return "the server does not offer this (STARTTLS or AUTH): check notifiers.smtp.tls, user, host_port"
    if isinstance(e, ssl.SSLError):
        return "the TLS handshake failed: the server's certificate must be trusted by the system CAs"
    if isinstance(e, aiosmtplib.SMTPRecipientsRefused | aiosmtplib.SMTPSenderRefused):
        return "the server refused an address: check notifiers.smtp.from and to"
    if isinstance(e, OSError | TimeoutError):
        return "check that notifiers.smtp.host_port is reachable from talon-opa"
    return "the server refused the message: read its answer above"
