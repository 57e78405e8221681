"""`approvals`, `approve ID`, `deny ID`: the running engine's pending approvals (docs/approvals.md).

They call the engine's operator API (`/v1/approvals`) at `--url` (default: the -c config's listen address
and port, http or https as its `tls`) with `Authorization: Bearer <token>`, the token from `--token`,
else $AUTH_OPERATOR_TOKEN, else the -c config's `auth.operator_token`. Exit 0 done; 1 the engine refused
(unknown or expired id: the reason is printed); 2 no token, or the engine cannot be reached.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import sys
import time
import urllib.parse
from typing import Any

from talon_opa.cli import operator_api

EXIT_OK, EXIT_REFUSED, EXIT_INVALID = 0, 1, 2
PATH = "/v1/approvals"


def add_commands(sub: Any) -> None:
    """The three commands, on the root's subparsers."""
    listing = sub.add_parser("approvals", help="list the running engine's pending approvals")
    _connection(listing)
    listing.add_argument("--json", action="store_true", help="print the API's JSON")
    for verb, what in (("approve", "approve a pending step: it runs"), ("deny", "deny a pending step: it is skipped")):
        p = sub.add_parser(verb, help=what)
        p.add_argument("id", metavar="ID", help="the approval id (from the notification or `approvals`)")
        p.add_argument("--by", default="", help="who decides, recorded (default: your login name)")
        p.add_argument("--reason", default="", help="why, recorded")
        _connection(p)


def _connection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c", "--config", dest="config_1", default=argparse.SUPPRESS, metavar="FILE", help="the engine's config file"
    )
    operator_api.add_connection_args(p)


def main(args: argparse.Namespace) -> int:
    from talon_opa.core import config

    try:
        url, token = operator_api.target(args)
    except config.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    try:
        return _run(args, url, token)
    except operator_api.Unreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID


def _run(args: argparse.Namespace, url: str, token: str) -> int:
    if args.command == "approvals":
        status, doc = operator_api.call("GET", url + PATH, token, cacert=args.cacert)
        if status != 200:
            return _refused(status, doc)
        if args.json:
            print(json.dumps(doc, indent=2, sort_keys=True))
        else:
            _print_pending(doc.get("approvals", []))
        return EXIT_OK
    result = "approve" if args.command == "approve" else "deny"
    body = {"by": args.by or _login(), "reason": args.reason}
    decide_url = f"{url}{PATH}/{urllib.parse.quote(args.id, safe='')}/{result}"
    status, doc = operator_api.call("POST", decide_url, token, body=body, cacert=args.cacert)
    if status != 200:
        return _refused(status, doc)
    print(f"{doc.get('id')} {doc.get('result')} by {doc.get('by')} (trace {doc.get('trace_id')})")
    return EXIT_OK


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "talon-opa CLI"


def _refused(status: int, doc: dict[str, Any]) -> int:
    why = {401: "the token is wrong", 404: "not found", 410: "no longer pending"}.get(status, f"HTTP {status}")
    print(f"error: {doc.get('error') or why} (HTTP {status})", file=sys.stderr)
    return EXIT_REFUSED


def _print_pending(items: list[dict[str, Any]]) -> None:
    if not items:
        print("no pending approvals")
        return
    now = time.time()
    for a in items:
        expires = datetime.datetime.fromtimestamp(float(a["expires"]), datetime.UTC).strftime("%H:%M:%SZ")
        left = max(0, int(float(a["expires"]) - now))
        where = "/".join(x for x in (a.get("namespace"), a.get("pod")) if x) or "-"
        print(
            f"{a['id']}  {a['actionner']}  rule {a['rule']!r} action {a['action']!r}  {where}  "
            f"expires {expires} ({left}s)  trace {a['trace_id']}"
        )
