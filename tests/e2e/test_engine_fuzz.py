"""A bounded property-based fuzz of the intake (issue 14), against the real engine and a real child OPA.

Hypothesis generates alerts (every field of any JSON type, keys in any case, control characters, deep
nesting, big numbers, valid and invalid times) and raw bodies (random bytes, cut and corrupted alerts,
deep brackets), sent with assorted Content-Type and Content-Encoding headers (gzip and deflate included,
valid or not). Derandomized (a fixed seed: the same inputs on every run, in CI too) and bounded in count
(FUZZ_EXAMPLES of each kind, default 1500). Properties:

- no 5xx, ever;
- every 4xx is JSON `{"error", "field"}` with a non-empty error;
- every 200 is decided or reported: once drained, decisions + alerts counted as failed == alerts queued;
- the engine stays ready, and no task or handler fails behind the answers.

The figures (requests, statuses, lost, RSS before/after) are printed (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import json
import logging
import os
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from talon_opa.core import config, logs
from tests.e2e.engine_harness import DRY_RUN_RULES, RunningEngine, running_engine

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1500"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # a fixed seed: CI replays the same inputs
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
MAX_BODY = 64 * 1024


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Background:
    """The real engine, running on its own event loop in a thread, so Hypothesis can drive it synchronously."""

    def __init__(self, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-engine", daemon=True)
        self.thread.start()
        self.stack = contextlib.AsyncExitStack()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.queued = 0
        self.problems: list[str] = []
        self.rss = (0, 0)  # KiB: before the engine started, once it had
        self.errors: list[str] = []
        self.engine: RunningEngine = self.run(self._start(tmp_path))

    async def _start(self, tmp_path: Path) -> RunningEngine:
        return await self.stack.enter_async_context(
            running_engine(
                tmp_path,
                DRY_RUN_RULES,
                intake=config.Intake(max_body_bytes=MAX_BODY),
                queue=config.Queue(capacity=100_000, workers=8, drain_timeout_seconds=60),
                deduplication=config.Deduplication(time_window_seconds=0),  # every 200 is queued
            )
        )

    def run(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout=120)

    def close(self) -> None:
        self.run(self.stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)

    def send(self, body: bytes, headers: dict[str, str], method: str = "POST") -> None:
        self.run(self._send(body, headers, method))

    async def _send(self, body: bytes, headers: dict[str, str], method: str) -> None:
        e = self.engine
        async with e.http.request(method, e.url + "/", data=body, headers=headers) as r:
            raw = await r.read()
            status = r.status
            content_type = r.headers.get("Content-Type", "")
        self.statuses[status] += 1
        where = f"{method} {headers} {body[:120]!r} → {status} {raw[:200]!r}"
        if status >= 500:
            self.problems.append(f"5xx: {where}")
            return
        try:
            doc = json.loads(raw)
        except ValueError:
            self.problems.append(f"not JSON: {where}")
            return
        if not content_type.startswith("application/json"):
            self.problems.append(f"not application/json: {where}")
        if status == 200:
            if "duplicate_of" in doc:
                self.problems.append(f"a duplicate with dedup off: {where}")
            self.queued += 1
        elif 400 <= status < 500:
            if not (isinstance(doc.get("error"), str) and doc["error"] and isinstance(doc.get("field"), str)):
                self.problems.append(f"4xx without error and field: {where}")
        else:
            self.problems.append(f"unexpected status: {where}")


class _Errors(logging.Handler):
    """Records every error line (a handler failing behind an answer, an aiohttp traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    errors = _Errors()
    watched = (logs.get(), logging.getLogger("aiohttp"))
    for logger in watched:
        logger.addHandler(errors)
    before = rss_kib()
    bg = Background(tmp_path_factory.mktemp("fuzz"))
    bg.rss = (before, rss_kib())
    bg.errors = errors.lines
    try:
        yield bg
    finally:
        bg.close()
        for logger in watched:
            logger.removeHandler(errors)


# --- what is generated ----------------------------------------------------------------------------------

NASTY = st.characters(codec="utf-8") | st.sampled_from(["\n", "\r", "\x1b", "\x00", '"', "\\", "\u2028", "\x9b"])
TEXT = st.text(NASTY, max_size=40)
LEAF = st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | TEXT
JSON = st.recursive(
    LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12
)
RULES = st.sampled_from(["Terminal shell in container", "Write below etc", "Mine"]) | TEXT
PRIORITIES = st.sampled_from(["Notice", "warning", "CRITICAL", "Informational", "Info"]) | TEXT
TIMES = (
    st.sampled_from(
        [
            "2026-07-14T08:21:07.114583261Z",
            "2026-07-14T08:21:07+02:00",
            "2026-02-30T00:00:00Z",
            "2026-07-14T08:21:07Z\n",
        ]
    )
    | TEXT
)
FIELDS = st.dictionaries(
    st.sampled_from(["k8s.pod.name", "k8s.ns.name", "proc.pid", "fd.rip", "proc.aname[2]"]) | TEXT, JSON, max_size=6
)
VALUES = {
    "output": TEXT | JSON,
    "priority": PRIORITIES | JSON,
    "rule": RULES | JSON,
    "time": TIMES | JSON,
    "source": st.sampled_from(["syscall", "k8s_audit", "okta"]) | TEXT | JSON,
    "hostname": TEXT | JSON,
    "output_fields": FIELDS | JSON,
    "tags": st.lists(TEXT | JSON, max_size=5) | JSON,
    "context": FIELDS | JSON,
}


@st.composite
def alerts(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, values in VALUES.items():
        if draw(st.booleans()):
            spelled = draw(st.sampled_from([key, key.upper(), key.title()]))  # keys are case-insensitive
            doc[spelled] = draw(values)
    if draw(st.booleans()):
        doc[draw(TEXT)] = draw(JSON)  # an unknown key
    return doc


@st.composite
def deep(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(1, 3000))
    key = draw(st.sampled_from([b"tags", b"output_fields", b"context"]))
    inner = b"[" * n + b"]" * n if key == b"tags" else b'{"a":' + b'{"b":' * n + b"1" + b"}" * n + b"}"
    return b'{"' + key + b'":' + inner + b"}"


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "cut", "flipped", "deep", "huge-number"]))
    if kind == "bytes":
        return draw(st.binary(max_size=2000))
    if kind == "deep":
        return draw(deep())
    if kind == "huge-number":
        return b'{"output_fields": {"n": ' + b"9" * draw(st.integers(1, 10_000)) + b"}}"
    body = json.dumps(draw(alerts())).encode()
    if kind == "cut":
        return body[: draw(st.integers(0, len(body)))]
    i = draw(st.integers(0, max(0, len(body) - 1)))
    return body[:i] + bytes([draw(st.integers(0, 255))]) + body[i + 1 :]


@st.composite
def headers_and_body(draw: st.DrawFn, body: bytes) -> tuple[dict[str, str], bytes]:
    headers = {}
    content_type = draw(st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", "", "x"]))
    if content_type:
        headers["Content-Type"] = content_type
    coding = draw(st.sampled_from(["", "", "gzip", "deflate", "identity", "br", "gzip-garbage", "deflate-garbage"]))
    if coding == "gzip":
        body = gzip.compress(body)
    elif coding == "deflate":
        body = zlib.compress(body)
    if coding:
        headers["Content-Encoding"] = coding.removesuffix("-garbage")
    return headers, body


@FUZZ_SETTINGS
@given(data=st.data())
def test_generated_alerts(fuzzed: Background, data: st.DataObject) -> None:
    body = json.dumps(data.draw(alerts()), ensure_ascii=data.draw(st.booleans())).encode()
    headers, body = data.draw(headers_and_body(body))
    fuzzed.send(body, headers)


@FUZZ_SETTINGS
@given(data=st.data())
def test_raw_bodies(fuzzed: Background, data: st.DataObject) -> None:
    headers, body = data.draw(headers_and_body(data.draw(raw_bodies())))
    method = data.draw(st.sampled_from(["POST"] * 8 + ["PUT", "PATCH"]))
    fuzzed.send(body, headers, method)


def test_every_accepted_alert_was_decided_and_the_engine_is_still_ready(fuzzed: Background) -> None:
    bg = fuzzed
    bg.run(bg.engine.drained())
    decided = int(bg.run(bg.engine.metric("talon_opa_decision_duration_seconds_count")))
    failed = int(bg.run(bg.engine.metric("talon_opa_alerts_failed_total")))
    ready = bg.run(bg.engine.get("/readyz"))
    lost = bg.queued - decided - failed
    print(
        f"\nfuzz: {sum(bg.statuses.values())} requests, statuses {dict(sorted(bg.statuses.items()))}, "
        f"queued {bg.queued}, decided {decided}, reported failed {failed}, lost {lost}, "
        f"problems {len(bg.problems)}, error lines {len(bg.errors)}, "
        f"RSS {bg.rss[0]} KiB before the engine, {bg.rss[1]} KiB started, {rss_kib()} KiB after"
    )
    assert sum(bg.statuses.values()) >= 2 * EXAMPLES
    assert bg.problems == []
    assert lost == 0
    assert ready.status == 200, ready.body
    assert bg.errors == []
