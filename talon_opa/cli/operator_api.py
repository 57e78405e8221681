"""The running engine's operator API as the CLI reaches it (`undo`, `approvals`, `approve`, `deny`).

The engine is at `--url`, else at the `-c` config's `listen_address`/`listen_port` (https when it has
`tls.cert_file`), else at http://127.0.0.1:2803. The token comes from `--token`, else `auth.operator_token`
(its env var AUTH_OPERATOR_TOKEN, else the config's value: the engine's own precedence).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

from talon_opa.cli import completion

if TYPE_CHECKING:  # imported when used: every command line builds the parser that imports this module
    from talon_opa.core import config

TOKEN_ENV = "AUTH_OPERATOR_TOKEN"  # the env var of `auth.operator_token`


class Unreachable(Exception):
    """The engine could not be reached (not running, wrong URL, TLS problem)."""


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="", help="the engine's URL (default: from -c, else http://127.0.0.1:2803)")
    p.add_argument("--token", default="", help=f"the operator token (prefer ${TOKEN_ENV}: argv shows in ps)")
    p.add_argument("--cacert", metavar="FILE", type=completion.path, default=None, help="CA bundle of an https engine")


def engine_url(cfg: config.Config) -> str:
    """The engine's base URL from its config (its listen address, loopback for an any-address)."""
    from talon_opa.core import config

    host = cfg.address if cfg.address not in (config.ANY_ADDRESS, "::", "") else config.LOOPBACK
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if cfg.tls.cert_file else 'http'}://{host}:{cfg.listen_port}"


def target(args: argparse.Namespace) -> tuple[str, str]:
    """The engine's base URL and the operator token from the command line, the env and the -c config;
    `config.ConfigError` when the config is invalid or no token is given."""
    from talon_opa.core import config

    cfg = config.load(args.config, env=os.environ)
    token = args.token or cfg.auth.operator_token
    if not token:
        raise config.ConfigError(
            "no operator token", hint=f"pass --token, set ${TOKEN_ENV}, or -c the engine's config (auth.operator_token)"
        )
    return (args.url or engine_url(cfg)).rstrip("/"), token


def call(
    method: str,
    url: str,
    token: str,
    *,
    body: dict[str, Any] | None = None,
    cacert: str | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, Any]]:
    """The API's status and JSON answer (a non-JSON answer becomes {"error": its text}); `Unreachable`."""
    import ssl
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Authorization": f"Bearer {token}"})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    context = ssl.create_default_context(cafile=cacert) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, _json(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, _json(e.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable(f"cannot reach the engine at {url}: {reason} (is it running? check --url)") from e


def _json(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data or b"{}")
    except ValueError:
        return {"error": data[:200].decode(errors="replace")}
    return doc if isinstance(doc, dict) else {"error": str(doc)[:200]}
