"""The OPA client: `POST /v1/data/talon/plan` with the alert's input, answered by the ordered plan.

One pooled session per OPA endpoint (TCP or unix socket), the token header, a deadline per request.
A missing `result` or a result that is not a plan is an OpaError (not retried: the bundle is wrong).
Connection errors and timeouts are retried with backoff for as long as it takes (alerts stay queued,
bounded by the queue, and are decided once OPA is back); a 5xx is retried a few times, since OPA's own
evaluation errors are 500s that would never heal.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from engine import logs
from engine.errors import OpaError

PLAN_PATH = "/v1/data/talon/plan"
BUNDLES_PATH = "/v1/data/system/bundles"
MAX_5XX_ATTEMPTS = 4

log = logs.get("decide")


class OpaUnavailable(OpaError):
    """OPA could not be reached (`status` None) or answered 5xx: retried."""

    def __init__(self, message: str, *, hint: str = "", status: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


@dataclass(frozen=True, slots=True)
class OutputStep:
    target: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the plan, as `data.talon.plan` gives it (DESIGN §3.2)."""

    rule: str
    action: str
    actionner: str
    parameters: Mapping[str, Any]
    continue_: bool = True
    ignore_errors: bool = False
    dry_run: bool = False
    output: OutputStep | None = None
    notifiers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    matched_rules: tuple[str, ...]
    steps: tuple[Step, ...]
    decision_id: str = ""
    revision: str = ""  # the bundle revision OPA decided with
    attempts: int = 1
    seconds: float = 0.0

    def acted_rules(self) -> tuple[str, ...]:
        """The matched rules Talon iterates: up to the last one with steps (a rule `continue: false` ends it)."""
        with_steps = {s.rule for s in self.steps}
        last = max(
            (i for i, r in enumerate(self.matched_rules) if r in with_steps), default=len(self.matched_rules) - 1
        )
        return self.matched_rules[: last + 1]


def parse_plan(result: Any) -> tuple[tuple[str, ...], tuple[Step, ...]]:
    """Check the shape of `data.talon.plan`; OpaError naming what is wrong."""

    def bad(what: str) -> OpaError:
        return OpaError(
            f"the decision at data.talon.plan is not a plan: {what}",
            hint="check policies/ and your native Rego: the plan is "
            '{"matched_rules": [...], "steps": [{"rule", "action", "actionner", "parameters", ...}]}',
        )

    if not isinstance(result, dict):
        raise bad(f"got {json.dumps(result)[:200]}")
    matched = result.get("matched_rules")
    steps = result.get("steps")
    if not isinstance(matched, list) or not all(isinstance(m, str) for m in matched):
        raise bad("matched_rules is not a list of strings")
    if not isinstance(steps, list):
        raise bad("steps is not a list")
    out: list[Step] = []
    for i, s in enumerate(steps):
        if not isinstance(s, dict):
            raise bad(f"steps[{i}] is not an object")
        for key in ("rule", "action", "actionner"):
            if not isinstance(s.get(key), str):
                raise bad(f"steps[{i}].{key} is not a string")
        params = s.get("parameters") or {}
        if not isinstance(params, dict):
            raise bad(f"steps[{i}].parameters is not an object")
        output = s.get("output")
        out_step = None
        if output is not None:
            if not isinstance(output, dict) or not isinstance(output.get("target"), str):
                raise bad(f"steps[{i}].output is not {{target, parameters}} or null")
            out_params = output.get("parameters") or {}
            if not isinstance(out_params, dict):
                raise bad(f"steps[{i}].output.parameters is not an object")
            out_step = OutputStep(output["target"], out_params)
        notifiers = s.get("notifiers") or []
        if not isinstance(notifiers, list) or not all(isinstance(n, str) for n in notifiers):
            raise bad(f"steps[{i}].notifiers is not a list of strings")
        flags = {}
        for key in ("continue", "ignore_errors", "dry_run"):
            v = s.get(key, key == "continue")
            if not isinstance(v, bool):
                raise bad(f"steps[{i}].{key} is not a boolean")
            flags[key] = v
        out.append(
            Step(
                rule=s["rule"],
                action=s["action"],
                actionner=s["actionner"],
                parameters=params,
                continue_=flags["continue"],
                ignore_errors=flags["ignore_errors"],
                dry_run=flags["dry_run"],
                output=out_step,
                notifiers=tuple(notifiers),
            )
        )
    return tuple(matched), tuple(out)


@dataclass
class Endpoint:
    """One OPA server: base URL, its pooled session and auth headers."""

    base_url: str
    session: aiohttp.ClientSession
    headers: Mapping[str, str] = field(default_factory=dict)
    in_flight: int = 0  # requests under way (a retired endpoint closes once they are done)

    @classmethod
    def open(cls, base_url: str, connector: aiohttp.BaseConnector, headers: Mapping[str, str]) -> Endpoint:
        return cls(base_url.rstrip("/"), aiohttp.ClientSession(connector=connector), dict(headers))

    @classmethod
    def for_url(cls, url: str, token: str = "") -> Endpoint:
        """A sidecar at http(s)://host:port or unix:///path/to/socket."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if url.startswith("unix://"):
            return cls.open("http://opa", aiohttp.UnixConnector(path=url.removeprefix("unix://")), headers)
        return cls.open(url, aiohttp.TCPConnector(limit=64), headers)

    async def close(self) -> None:
        await self.session.close()


class OpaClient:
    """Decisions and bundle status from the current endpoint (which the supervisor may swap)."""

    def __init__(
        self,
        endpoint: Callable[[], Endpoint],
        *,
        timeout: float = 2.0,
        retry_initial: float = 0.05,
        retry_max: float = 2.0,
        on_error: Callable[[str], None] | None = None,
        expected_revision: Callable[[], str] | None = None,
    ) -> None:
        self._endpoint = endpoint
        # the bundle revision OPA should decide with: without a result, a sidecar that has not loaded it
        # yet is "unavailable" (retried), not "wrong"
        self._expected = expected_revision or (lambda: "")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._on_error = on_error or (lambda kind: None)

    async def decide_once(self, opa_input: Mapping[str, Any]) -> Plan:
        """One request; OpaUnavailable when it may work later, OpaError when it will not."""
        ep = self._endpoint()
        started = time.perf_counter()
        ep.in_flight += 1
        try:
            async with ep.session.post(
                f"{ep.base_url}{PLAN_PATH}?provenance=true",
                json={"input": opa_input},
                headers=ep.headers,
                timeout=self._timeout,
            ) as r:
                text = await r.text()
                status = r.status
        except TimeoutError as e:
            raise OpaUnavailable(f"OPA did not answer within {self._timeout.total}s", hint="see OPA's log") from e
        except (aiohttp.ClientError, OSError, RuntimeError) as e:  # RuntimeError: session closed by a swap
            raise OpaUnavailable(f"OPA is unreachable: {e}", hint="the engine restarts its child OPA") from e
        finally:
            ep.in_flight -= 1
        seconds = time.perf_counter() - started
        if status >= 500:
            raise OpaUnavailable(f"OPA answered HTTP {status}: {text[:1000]}", hint="see OPA's log", status=status)
        if status != 200:
            raise OpaError(
                f"OPA answered HTTP {status}: {text[:1000]}",
                hint="401/403: the OPA token is wrong; 400: the input was refused",
            )
        try:
            body = json.loads(text)
        except ValueError as e:
            raise OpaError(f"OPA answered with invalid JSON: {text[:200]}", hint="see OPA's log") from e
        if not isinstance(body, dict):
            raise OpaError(f"OPA answered with a non-object: {text[:200]}", hint="see OPA's log")
        revisions: list[str] = []
        bundles = (body.get("provenance") or {}).get("bundles") or {}
        if isinstance(bundles, dict):
            revisions = [str(b["revision"]) for b in bundles.values() if isinstance(b, dict) and b.get("revision")]
        if "result" not in body:
            expected = self._expected()
            if expected and expected not in revisions:
                raise OpaUnavailable(
                    f"OPA has not activated bundle revision {expected} yet (it has {revisions or 'none'})",
                    hint="a sidecar polls the engine for its bundle: check its `bundles` configuration",
                )
            raise OpaError(
                "OPA returned no result for data.talon.plan",
                hint="the bundle does not define talon.plan: check policies/ and the generated Rego",
            )
        matched, steps = parse_plan(body["result"])
        return Plan(matched, steps, str(body.get("decision_id", "")), ",".join(revisions), 1, seconds)

    async def decide(
        self,
        opa_input: Mapping[str, Any],
        *,
        on_retry: Callable[[int, OpaError], Awaitable[None] | None] | None = None,
    ) -> Plan:
        """Decide, retrying while OPA is unavailable (connection errors forever, 5xx a few times)."""
        attempt = 0
        fivexx = 0
        delay = self._retry_initial
        while True:
            attempt += 1
            try:
                plan = await self.decide_once(opa_input)
            except OpaUnavailable as e:
                is_5xx = e.status is not None
                self._on_error("http_5xx" if is_5xx else "unavailable")
                if is_5xx:
                    fivexx += 1
                    if fivexx >= MAX_5XX_ATTEMPTS:
                        raise OpaError(f"{e} (after {attempt} attempts)", hint=e.hint) from e
                if attempt == 1 or attempt % 20 == 0:
                    log.warning("opa unavailable, retrying", extra={"error": str(e), "attempt": attempt})
                if on_retry is not None:
                    maybe = on_retry(attempt, e)
                    if maybe is not None:
                        await maybe
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            except OpaError:
                self._on_error("bad_answer")
                raise
            return Plan(plan.matched_rules, plan.steps, plan.decision_id, plan.revision, attempt, plan.seconds)

    async def revisions(self, timeout: float = 2.0) -> set[str]:
        """The revisions of the bundles OPA has activated; OpaUnavailable when it does not answer."""
        ep = self._endpoint()
        try:
            async with ep.session.get(
                f"{ep.base_url}{BUNDLES_PATH}", headers=ep.headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as r:
                if r.status != 200:
                    raise OpaUnavailable(f"OPA answered HTTP {r.status} for its bundles", hint="see OPA's log")
                body = await r.json()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
            raise OpaUnavailable(f"OPA is unreachable: {e}", hint="see OPA's log") from e
        result = body.get("result") or {}
        return {str((b.get("manifest") or {}).get("revision", "")) for b in result.values() if isinstance(b, dict)}
