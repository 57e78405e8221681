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
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from talon_opa.core import logs
from talon_opa.core.errors import OpaError

PLAN_PATH = "/v1/data/talon/plan"
BATCH_PATH = "/v1/data/talon/batch/plans"
BUNDLES_PATH = "/v1/data/system/bundles"
MAX_5XX_ATTEMPTS = 4

log = logs.get("decide")


class BatchRefused(OpaError):
    """OPA gave no usable answer for a whole batch: its alerts are decided one by one instead."""


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
    batch_size: int = 1  # alerts decided by the same request (they share its decision id)

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

    async def _post(self, path: str, opa_input: Any) -> tuple[dict[str, Any], list[str], float]:
        """One decision request: OPA's answer (an object), the bundle revisions it decided with, the seconds."""
        ep = self._endpoint()
        started = time.perf_counter()
        ep.in_flight += 1
        try:
            async with ep.session.post(
                f"{ep.base_url}{path}?provenance=true",
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
        return body, revisions, seconds

    async def decide_once(self, opa_input: Mapping[str, Any]) -> Plan:
        """One request; OpaUnavailable when it may work later, OpaError when it will not."""
        body, revisions, seconds = await self._post(PLAN_PATH, opa_input)
        if "result" not in body:
            raise OpaError(
                "OPA returned no result for data.talon.plan",
                hint="the bundle does not define talon.plan: check policies/ and the generated Rego",
            )
        matched, steps = parse_plan(body["result"])
        return Plan(matched, steps, str(body.get("decision_id", "")), ",".join(revisions), 1, seconds)

    async def decide_batch_once(self, inputs: Sequence[Mapping[str, Any]]) -> list[Plan | OpaError]:
        """One request for many alerts (`data.talon.batch.plans`): each alert's plan, or why it has none.

        OpaUnavailable when the request may work later; BatchRefused when OPA's answer is not a list of
        one value per alert (a bundle without talon.batch, an evaluation error...): decide them one by one.
        """
        try:
            body, revisions, seconds = await self._post(BATCH_PATH, {"alerts": inputs})
        except OpaUnavailable as e:
            if e.status is None:
                raise
            raise BatchRefused(str(e), hint=e.hint) from e  # a 5xx: maybe one alert's evaluation fails
        except OpaError as e:
            raise BatchRefused(str(e), hint=e.hint) from e
        result = body.get("result")
        if not isinstance(result, list) or len(result) != len(inputs):
            raise BatchRefused(
                "OPA returned no list of plans for data.talon.batch.plans", hint="the bundle lacks talon.batch"
            )
        decision_id = str(body.get("decision_id", ""))
        revision = ",".join(revisions)
        plans: list[Plan | OpaError] = []
        for value in result:
            try:
                matched, steps = parse_plan(value)
            except OpaError as e:
                plans.append(e)
                continue
            plans.append(Plan(matched, steps, decision_id, revision, 1, seconds))
        return plans

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


@dataclass(eq=False, slots=True)
class _Waiting:
    """An alert waiting for its plan from the batcher."""

    opa_input: Mapping[str, Any]
    future: asyncio.Future[Plan]
    on_retry: Callable[[int, OpaError], Awaitable[None] | None] | None
    since: float


class Batcher:
    """Micro-batched decisions: the alerts that wait at the same time are decided in one OPA request.

    `decide` keeps `OpaClient.decide`'s contract for each alert (its plan, or the OpaError it would get
    alone; connection errors retried for as long as it takes, with each alert's `on_retry` called).
    `run()` is the task sending the batches: once an alert waits, it lets the alerts handed out in the same
    loop turn join, then sends every waiting alert (up to `max_size`) as one `data.talon.batch.plans`
    request; alerts arriving meanwhile form the next batch. No timer: a lone alert goes at once. A batch
    OPA will not decide as a whole (an evaluation error, a bundle without talon.batch) is decided alert by
    alert. Without `run()` (or with `max_size` 1) each alert is its own request.
    """

    def __init__(self, client: OpaClient, *, max_size: int = 64) -> None:
        self._client = client
        self.max_size = max_size
        self._waiting: deque[_Waiting] = deque()
        self._wake = asyncio.Event()
        self._running = False
        self._refused_log = logs.Throttle(10.0)

    async def decide(
        self,
        opa_input: Mapping[str, Any],
        *,
        on_retry: Callable[[int, OpaError], Awaitable[None] | None] | None = None,
    ) -> Plan:
        if not self._running or self.max_size <= 1:
            return await self._client.decide(opa_input, on_retry=on_retry)
        future: asyncio.Future[Plan] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(opa_input, future, on_retry, time.perf_counter()))
        self._wake.set()
        return await future

    async def run(self) -> None:
        """Send batches until cancelled; alerts still waiting then get an OpaError."""
        self._running = True
        batch: list[_Waiting] = []
        try:
            while True:
                await self._wake.wait()
                await asyncio.sleep(0)  # the workers woken in this loop turn add their alerts first
                batch = []
                while self._waiting and len(batch) < self.max_size:
                    w = self._waiting.popleft()
                    if not w.future.done():  # its worker was cancelled meanwhile
                        batch.append(w)
                if not self._waiting:
                    self._wake.clear()
                if batch:
                    try:
                        await self._send(batch)
                    except Exception as e:  # a bug, not OPA: each alert fails as it would alone; go on
                        log.exception("batch failed")
                        for w in batch:
                            if not w.future.done():
                                w.future.set_exception(e)
        finally:
            self._running = False
            stopped = OpaError("the engine stopped before the alert was decided", hint="send it again")
            for w in (*batch, *self._waiting):
                if not w.future.done():
                    w.future.set_exception(stopped)
            self._waiting.clear()

    async def _send(self, batch: list[_Waiting]) -> None:
        client = self._client
        attempt = 0
        delay = client._retry_initial
        first_sent = time.perf_counter()
        while True:
            attempt += 1
            try:
                results = await client.decide_batch_once([w.opa_input for w in batch])
                break
            except BatchRefused as e:
                if self._refused_log.allow() is not None:
                    log.warning("batch refused, deciding its alerts one by one", extra={"error": str(e)})
                await self._one_by_one(batch)
                return
            except OpaUnavailable as e:  # not a 5xx (those are BatchRefused): retried for as long as it takes
                client._on_error("unavailable")
                if attempt == 1 or attempt % 20 == 0:
                    log.warning(
                        "opa unavailable, retrying", extra={"error": str(e), "attempt": attempt, "alerts": len(batch)}
                    )
                for w in batch:
                    if w.on_retry is not None and not w.future.done():
                        maybe = w.on_retry(attempt, e)
                        if maybe is not None:
                            await maybe
                await asyncio.sleep(delay)
                delay = min(delay * 2, client._retry_max)
                batch = [w for w in batch if not w.future.done()]
                if not batch:
                    return
        for w, result in zip(batch, results, strict=True):
            if w.future.done():
                continue
            if isinstance(result, OpaError):
                client._on_error("bad_answer")
                w.future.set_exception(result)
            else:
                seconds = first_sent - w.since + result.seconds  # waiting for the batch + its request
                w.future.set_result(
                    Plan(
                        result.matched_rules,
                        result.steps,
                        result.decision_id,
                        result.revision,
                        attempt,
                        seconds,
                        len(batch),
                    )
                )

    async def _one_by_one(self, batch: list[_Waiting]) -> None:
        async def one(w: _Waiting) -> None:
            try:
                plan = await self._client.decide(w.opa_input, on_retry=w.on_retry)
            except Exception as e:  # OpaError, or a bug: the alert's own outcome either way
                if not w.future.done():
                    w.future.set_exception(e)
                return
            if not w.future.done():
                w.future.set_result(plan)

        async with asyncio.TaskGroup() as tg:
            for w in batch:
                tg.create_task(one(w))
