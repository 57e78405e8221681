"""`talon-opa undo ID` and `talon-opa undo --list`: the running engine's operator API (docs/undo.md).

ID is an alert id (every reversible action of that alert is undone, last step first) or an action id
(`<alert id>-<step index>`). The engine is reached at `--url`, else at the `listen_address`/`listen_port`
of the `-c` config (https when it has `tls.cert_file`), else at http://127.0.0.1:2803. The operator token
comes from `--token`, else from `auth.operator_token`: its env var `AUTH_OPERATOR_TOKEN`, else the `-c`
config's value (the engine's own precedence). Exit 0: every action undone or already undone; 1: a conflict,
a failure, nothing with that id, or the engine refused (the reason printed); 2: bad arguments or config.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote

from talon_opa.cli import operator_api
from talon_opa.core import config

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
TIMEOUT_SECONDS = 120.0  # an undo of a whole alert runs each action's undo in turn
_OK = ("undone", "already_undone")


def main(args: argparse.Namespace) -> int:
    if bool(args.id) == bool(args.list):
        print("error: give an alert id or an action id, or --list", file=sys.stderr)
        return EXIT_INVALID
    try:
        base, token = operator_api.target(args)
    except config.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    method, url = ("GET", f"{base}/v1/undo") if args.list else ("POST", f"{base}/v1/undo/{quote(args.id, safe='')}")
    try:
        status, doc = operator_api.call(method, url, token, cacert=args.cacert, timeout=TIMEOUT_SECONDS)
    except operator_api.Unreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    if status != 200:
        hint = f" ({doc['hint']})" if doc.get("hint") else ""
        print(f"error: the engine answered {status}: {doc.get('error', doc)}{hint}")
        return EXIT_FAILED
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    elif args.list:
        print_pending(doc.get("pending") or [])
    else:
        for r in doc.get("results") or []:
            print(f"{r['action_id']} {r['actionner']}: {r['result']}: {r['message']} (trace {r['trace_id']})")
    if args.list:
        return EXIT_OK
    return EXIT_OK if all(r.get("result") in _OK for r in doc.get("results") or []) else EXIT_FAILED


def print_pending(pending: list[dict[str, Any]]) -> None:
    if not pending:
        print("no pending undo")
        return
    for p in pending:
        when = f"undone at {p['expires_at']} (TTL)" if p.get("expires_at") else "on demand"
        print(f"{p['action_id']} {p['actionner']} [{p['rule']} / {p['action']}]: {p['undo']}; {when}")
