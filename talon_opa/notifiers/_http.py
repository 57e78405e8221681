"""What the HTTP notifiers share: one request with a deadline per attempt, retried a bounded number of
times on a 5xx answer, a 429 or a connection error, and an error that names the receiver without its
secrets (credentials, query string) and quotes the start of its answer.

Other 4xx answers are not retried: the same request would be refused again. The engine's step deadline
(`step_timeout_seconds`) still caps the whole send.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from talon_opa.core.backoff import Backoff, Policy, Sleep
from talon_opa.core.errors import TalonError

if TYPE_CHECKING:  # imported where used: rules naming a notifier are validated before aiohttp is imported
    import aiohttp

TIMEOUT_S = 10.0  # one attempt (aiohttp's default would be 5 minutes)
ATTEMPTS = 3
BACKOFF = Policy(initial=0.2, maximum=1.0)
BODY_EXCERPT = 300  # characters of a refusal's body kept in the error
REPLY_LIMIT = 64 * 1024  # bytes of a reply read at most (a notifier never needs a large one)
RETRIED = frozenset({429})  # besides every 5xx


class SendFailed(TalonError):
    """A notification did not reach its receiver, or the receiver refused it."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    text: str


def shown(url: str, *, path: bool = True) -> str:
    """The URL without credentials, query or fragment (they may carry secrets), and without the path unless `path`."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
    return origin + parts.path if path else origin


def under(url: str, path: str) -> str:
    """`path` appended to the URL's own path (its query and fragment kept at the end)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + path))


def basic_auth(user: str, password: str) -> dict[str, str]:
    """The Authorization header of HTTP basic auth."""
    import aiohttp

    return {"Authorization": aiohttp.encode_basic_auth(user, password)}


def _retried(status: int) -> bool:
    return status >= 500 or status in RETRIED


async def send(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    notifier: str,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    ok: Collection[int] | None = None,
    hint: str,
    shown_as: str | None = None,
    timeout_s: float = TIMEOUT_S,
    attempts: int = ATTEMPTS,
    sleep: Sleep | None = None,
) -> Reply:
    """Send one request; its reply when the status is in `ok` (default: any 2xx), else SendFailed.

    `hint` says what to check when the receiver refuses; a connection problem gets its own hint. Errors
    name the receiver by `shown_as`, by default the URL without credentials, query or fragment.
    """
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=timeout_s)
    backoff = Backoff(BACKOFF, sleep=sleep)
    where = f"{notifier} {method} {shown(url) if shown_as is None else shown_as}"
    while True:
        cause: BaseException | None = None
        try:
            async with http.request(method, url, data=data, headers=dict(headers or {}), timeout=timeout) as r:
                text = _text(await r.content.read(REPLY_LIMIT), r.charset)
                if (200 <= r.status < 300) if ok is None else (r.status in ok):
                    return Reply(r.status, text)
                message, why, retry = f"HTTP {r.status}: {text[:BODY_EXCERPT]}", hint, _retried(r.status)
        except (aiohttp.ClientError, TimeoutError) as e:
            detail = str(e) or ("timed out" if isinstance(e, TimeoutError) else "no detail")
            message, why, retry, cause = f"{type(e).__name__}: {detail}", _unreachable(notifier), True, e
        if not retry or backoff.attempt >= attempts:
            tries = f" (attempt {backoff.attempt} of {attempts})" if retry else ""
            raise SendFailed(f"{where}: {message}{tries}", hint=why) from cause
        await backoff.sleep()


def _text(raw: bytes, charset: str | None) -> str:
    try:
        return raw.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return raw.decode("utf-8", errors="replace")


def _unreachable(notifier: str) -> str:
    return f"check that the {notifier} server is reachable from talon-opa"
