"""`rules translate|plan|test`: write the bundle, print plans decided by a real OPA, run `opa test`.

Exit codes: 0 done; 1 OPA or bundle failure (the message says which); 2 invalid rules, an
undecodable alert or an unreadable input (every problem is printed, with its place).
`rules test` passes `opa test`'s own exit code through.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from talon_opa import catalog
from talon_opa.core import binaries, config, events
from talon_opa.core.errors import AlertError, OpaError, RulesError, TalonError
from talon_opa.opa import client as opa_client
from talon_opa.opa.process import OpaProcess
from talon_opa.translator import bundle, rego
from talon_opa.translator import rules as rules_loader
from talon_opa.translator.model import RuleSet

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
PLAN_PATH = opa_client.PLAN_PATH
DECIDE_TIMEOUT_S = 10.0
OPA_READY_S = 600.0  # OPA compiles every rule's module at start: about a minute for 10,000 rules


class Invalid(TalonError):
    """Bad user input (rules, alerts, files): exit 2."""


def main(args: argparse.Namespace) -> int:
    commands = {"translate": translate, "plan": plan, "test": test}
    return guarded(commands[args.rules_command], args)


def guarded(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; its errors printed with the exit codes of the module doc."""
    try:
        return command(args)
    except RulesError as e:
        print(f"error: invalid rules: {len(e.problems)} problem(s)", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    except Invalid as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    except TalonError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED


def load(paths: Sequence[str]) -> RuleSet:
    """The validated rules set of these files (RulesError with every problem otherwise)."""
    return rules_loader.load_ruleset([Path(p) for p in paths], catalog.default_registry())


def translate(args: argparse.Namespace) -> int:
    ruleset = load(args.rules)
    out = Path(args.output)
    key = Path(args.signing_key) if args.signing_key else None
    files = rego.generate(ruleset, as_data={"auto": None, "modules": False, "data": True}[args.form])
    revision = bundle.build_bundle(files, out, signing_key=key, native=[Path(p) for p in args.rego])
    print(f"revision {revision} bundle {out}")
    return EXIT_OK


def plan(args: argparse.Namespace) -> int:
    ruleset = load(args.rules)
    inputs = [alert.opa_input() for alert in decode_alerts(read_event_file(args.event))]
    cfg = config.load(args.caps, env={}) if getattr(args, "caps", None) else None
    caps, approvals, undo = (cfg.caps, cfg.approvals, cfg.undo) if cfg is not None else (None, None, None)
    asyncio.run(_print_plans(ruleset, [Path(p) for p in args.rego], inputs, caps, approvals, undo))
    return EXIT_OK


def test(args: argparse.Namespace) -> int:
    ruleset = load(args.rules)
    with tempfile.TemporaryDirectory(prefix="talon-opa-test-") as tmp:
        translated = Path(tmp) / "translated"
        bundle.write_tree(rego.generate(ruleset), translated, "test")
        (translated / ".manifest").unlink()  # plain files for `opa test`, not a bundle
        paths = [str(bundle.POLICIES)] if bundle.POLICIES.is_dir() else []
        cmd = [binaries.find("opa"), "test", *paths, str(translated), *args.paths]
        sys.stdout.flush()
        return subprocess.run(cmd, check=False).returncode


def read_event_file(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as e:
        raise Invalid(f"cannot read --event {name}: {e.strerror}", hint="pass a JSON file, or - for stdin") from e


def split_alerts(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(line, body) of each alert: the whole file if it is one JSON value, else each non-blank line."""
    try:
        json.loads(data)
    except ValueError:
        for number, line in enumerate(data.splitlines(), start=1):
            if line.strip():
                yield number, line
        return
    yield 1, data


def decode_alerts(data: bytes) -> list[events.Alert]:
    alerts = []
    for line, body in split_alerts(data):
        try:
            alerts.append(events.decode_alert(body, "application/json"))
        except AlertError as e:
            where = f" (field {e.field!r})" if e.field else ""
            raise Invalid(f"alert at line {line} cannot be decoded{where}: {e}") from e
    if not alerts:
        raise Invalid("no alert in --event", hint="give a JSON object, or one JSON object per line")
    return alerts


async def _print_plans(
    ruleset: RuleSet,
    native: Sequence[Path],
    inputs: Sequence[dict[str, Any]],
    caps: Mapping[str, Any] | None = None,
    approvals: Mapping[str, Any] | None = None,
    undo: Mapping[str, Any] | None = None,
) -> None:
    async with deciding(ruleset, native, caps, approvals, undo) as decider:
        for opa_input in inputs:
            result = await decider.decide(opa_input)
            print(json.dumps(result, separators=(",", ":"), ensure_ascii=False), flush=True)


@dataclass(frozen=True, slots=True)
class Decider:
    """A real OPA serving the bundle of a rules set: `decide` one input's plan."""

    revision: str
    http: aiohttp.ClientSession
    base_url: str

    async def decide(self, opa_input: dict[str, Any]) -> dict[str, Any]:
        return await decide(self.http, self.base_url, opa_input)


@contextlib.asynccontextmanager
async def deciding(
    ruleset: RuleSet,
    native: Sequence[Path],
    caps: Mapping[str, Any] | None = None,
    approvals: Mapping[str, Any] | None = None,
    undo: Mapping[str, Any] | None = None,
) -> AsyncIterator[Decider]:
    """The rules set (plus native Rego, caps as data.talon.caps, approvals as data.talon.approvals, undo TTLs
    as data.talon.undo) in a bundle, served by a real OPA."""
    with tempfile.TemporaryDirectory(prefix="talon-opa-plan-") as tmp:
        out = Path(tmp) / "bundle"
        files = rego.generate(ruleset)
        if caps is not None:
            files = {**files, bundle.CAPS_DATA_FILE: json.dumps(config.caps_data(caps), sort_keys=True)}
        if approvals is not None:
            files = {**files, bundle.APPROVALS_DATA_FILE: json.dumps(config.approvals_data(approvals), sort_keys=True)}
        if undo is not None:
            files = {**files, bundle.UNDO_DATA_FILE: json.dumps(config.undo_data(undo), sort_keys=True)}
        revision = bundle.build_bundle(files, out, native=list(native), check=False)
        opa = OpaProcess(bundle=out)
        await opa.start(ready_within=OPA_READY_S)
        try:
            async with aiohttp.ClientSession(connector=opa.connector(), headers=opa.headers()) as http:
                yield Decider(revision, http, opa.base_url)
        finally:
            await opa.stop()


async def decide(
    http: aiohttp.ClientSession, base_url: str, opa_input: dict[str, Any], *, path: str = PLAN_PATH
) -> dict[str, Any]:
    """The plan OPA decides for one input; OpaError on an error answer or a missing/ill-shaped result."""
    endpoint = opa_client.Endpoint(base_url, http)
    client = opa_client.OpaClient(lambda: endpoint, timeout=DECIDE_TIMEOUT_S)
    try:
        return await client.plan_result(opa_input, path=path)  # the engine's own checks: what it refuses, we refuse
    except OpaError as e:
        # worded for someone trying their rules: any error answer is the Rego failing, shown at length
        cause = e.__cause__
        if isinstance(cause, opa_client.ErrorAnswer):
            raise OpaError(
                f"OPA answered HTTP {cause.status}: {cause.text[:2000]}", hint="the Rego failed at evaluation"
            ) from e
        if isinstance(e, opa_client.OpaUnavailable) and cause is not None:
            raise OpaError(f"OPA did not answer: {cause!r}", hint="see OPA's log") from e
        raise
