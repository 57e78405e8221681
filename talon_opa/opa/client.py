"""The OPA client: `POST /v1/data/talon/plan` with the alert's input, answered by the ordered plan.

The one way talon-opa talks to an OPA server: the engine's decisions (one alert, or a batch), the
bundle revisions OPA has activated, and the plans `talon-opa rules plan` prints.

One pooled session per OPA endpoint (TCP or unix socket), the token header, a deadline per request.
A missing `result` or a result that is not a plan is an OpaError (not retried: the bundle is wrong).
Connection errors and timeouts are retried with backoff for as long as it takes (alerts stay queued,
bounded by the queue, and are decided once OPA is back); a 5xx is retried a few times, since OPA's own
evaluation errors are 500s that would never heal. An OpaError for an HTTP error status has the
`ErrorAnswer` (status and whole body) as its `__cause__`; one for an unreachable OPA, the connection
error or timeout.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from talon_opa.core import logs
from talon_opa.core.backoff import Backoff, Policy
from talon_opa.core.errors import OpaError
from talon_opa.opa.plan import Plan, parse_plan

PLAN_PATH = "/v1/data/talon/plan"
BATCH_PATH = "/v1/data/talon/batch/plans"
BUNDLES_PATH = "/v1/data/system/bundles"
INDEX_PATH = "/v1/data/talon/index"
NATIVE_PATH = "/v1/data/talon/native"
MAX_5XX_ATTEMPTS = 4

log = logs.get("decide")


class BatchRefused(OpaError):
    """OPA gave no usable answer for a whole batch: its alerts are decided one by one instead."""


class ErrorAnswer(Exception):
    """OPA answered with an HTTP error status: the cause of the OpaError raised for it."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.text = text  # the whole body


class OpaUnavailable(OpaError):
    """OPA could not be reached (`status` None) or answered 5xx: retried."""

    def __init__(self, message: str, *, hint: str = "", status: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


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
        self._retry = Policy(retry_initial, retry_max)
        self._on_error = on_error or (lambda kind: None)

    @property
    def retry(self) -> Policy:
        """The waits between attempts while OPA is unavailable."""
        return self._retry

    @property
    def on_error(self) -> Callable[[str], None]:
        """Counts a failed decision by kind: `unavailable`, `http_5xx` or `bad_answer`."""
        return self._on_error

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
            raise OpaUnavailable(
                f"OPA answered HTTP {status}: {text[:1000]}", hint="see OPA's log", status=status
            ) from ErrorAnswer(status, text)
        if status != 200:
            raise OpaError(
                f"OPA answered HTTP {status}: {text[:1000]}",
                hint="401/403: the OPA token is wrong; 400: the input was refused",
            ) from ErrorAnswer(status, text)
        try:
            body = json.loads(text)
        except ValueError as e:
            raise OpaError(f"OPA answered with invalid JSON: {text[:200]}", hint="see OPA's log") from e
        if not isinstance(body, dict):
            raise OpaError(f"OPA answered with a non-object: {text[:200]}", hint="see OPA's log")
        revisions = _revisions(body)
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
        matched, steps = parse_plan(_result(body, PLAN_PATH))
        return Plan(matched, steps, str(body.get("decision_id", "")), ",".join(revisions), 1, seconds)

    async def plan_result(self, opa_input: Mapping[str, Any], *, path: str = PLAN_PATH) -> dict[str, Any]:
        """The plan at `path` as OPA gives it (what `rules plan` prints), checked like a decision; one request."""
        body, _, _ = await self._post(path, opa_input)
        result = _result(body, path)
        parse_plan(result)  # what the engine would refuse, refused here too
        plan: dict[str, Any] = result  # parse_plan checked it is an object
        return plan

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
        backoff = Backoff(self._retry)
        fivexx = 0
        while True:
            attempt = backoff.attempt
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
                await backoff.sleep()
                continue
            except OpaError:
                self._on_error("bad_answer")
                raise
            return dataclasses.replace(plan, attempts=attempt)

    async def candidate_index(self) -> tuple[dict[str, Any], list[str]]:
        """The candidate lookups as OPA serves them, and its bundle revisions.

        `by_rule`, `by_tag`, `always` (of data.talon.index) and `native` (data.talon.native), each None
        when undefined; the plan entries of data.talon.index are not fetched. OpaUnavailable when OPA does
        not answer them all, or answers them from different revisions (a swap in between: ask again).
        """
        values: dict[str, Any] = {}
        seen: list[list[str]] = []
        for name, path in (
            ("by_rule", f"{INDEX_PATH}/by_rule"),
            ("by_tag", f"{INDEX_PATH}/by_tag"),
            ("always", f"{INDEX_PATH}/always"),
            ("native", NATIVE_PATH),
        ):
            values[name], revisions = await self._get(path)
            seen.append(revisions)
        if any(r != seen[0] for r in seen):
            raise OpaUnavailable(f"OPA changed bundles between reads ({seen})", hint="ask again")
        return values, seen[0]

    async def _get(self, path: str) -> tuple[Any, list[str]]:
        """One data document (None when undefined) and the revisions of the bundles OPA read it from."""
        ep = self._endpoint()
        try:
            async with ep.session.get(
                f"{ep.base_url}{path}?provenance=true", headers=ep.headers, timeout=self._timeout
            ) as r:
                if r.status != 200:
                    raise OpaUnavailable(f"OPA answered HTTP {r.status} for {path}", hint="see OPA's log")
                body = await r.json()
        except TimeoutError as e:
            raise OpaUnavailable(f"OPA did not answer within {self._timeout.total}s", hint="see OPA's log") from e
        except (aiohttp.ClientError, OSError, ValueError, RuntimeError) as e:
            raise OpaUnavailable(f"OPA is unreachable: {e or type(e).__name__}", hint="see OPA's log") from e
        if not isinstance(body, dict):
            raise OpaUnavailable(f"OPA answered {path} with a non-object", hint="see OPA's log")
        return body.get("result"), _revisions(body)

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
        except TimeoutError as e:
            raise OpaUnavailable(
                f"OPA did not answer within {timeout:g} s", hint="is OPA overloaded or stopped?"
            ) from e
        except (aiohttp.ClientError, OSError, ValueError) as e:
            raise OpaUnavailable(f"OPA is unreachable: {e or type(e).__name__}", hint="see OPA's log") from e
        result = body.get("result") or {}
        return {str((b.get("manifest") or {}).get("revision", "")) for b in result.values() if isinstance(b, dict)}


def _revisions(body: Mapping[str, Any]) -> list[str]:
    """The bundle revisions in an answer's provenance (`?provenance=true`)."""
    bundles = (body.get("provenance") or {}).get("bundles") or {}
    if not isinstance(bundles, dict):
        return []
    return [str(b["revision"]) for b in bundles.values() if isinstance(b, dict) and b.get("revision")]


def _result(body: Mapping[str, Any], path: str) -> Any:
    """The decision in OPA's answer; OpaError when it has none (the bundle does not define it)."""
    if "result" not in body:
        raise OpaError(
            f"OPA returned no result for data{path.removeprefix('/v1/data').replace('/', '.')}",
            hint="the bundle does not define talon.plan: check policies/ and the generated Rego",
        )
    return body["result"]
