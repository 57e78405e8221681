"""A bounded property-based fuzz of the intake (issue 14), against the real `talon-opa server` process
and its real child OPA.

Hypothesis generates alerts (every field of any JSON type, keys in any case, control characters, deep
nesting, big numbers, valid and invalid times) and raw bodies (random bytes, cut and corrupted alerts,
deep brackets), sent with assorted Content-Type and Content-Encoding headers (gzip and deflate included,
valid or not). Derandomized (a fixed seed: the same inputs on every run, in CI too) and bounded in count
(FUZZ_EXAMPLES of each kind, default 1000; pytest-timeout 900 s each on a loaded machine). Properties:

- no 5xx, ever;
- every 4xx is JSON `{"error", "field"}` with a non-empty error;
- every 200 is decided or reported: once drained, decisions + alerts counted as failed == alerts queued;
- the engine stays ready, and no task or handler fails behind the answers.

The figures (requests, statuses, lost, the engine's RSS before/after) are printed (`pytest -s`).
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from talon_opa.opa.process import free_port
from tests.e2e.engine_harness import DRY_RUN_RULES
from tests.e2e.server_process import REPO

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # a fixed seed: CI replays the same inputs
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
MAX_BODY = 64 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Server:
    """`talon-opa server` on loopback, driven synchronously (Hypothesis runs each example as a plain call)."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        rules = tmp_path / "rules.yaml"
        rules.write_text(DRY_RUN_RULES)
        cfg = {
            "listen_port": self.port,
            "intake": {"max_body_bytes": MAX_BODY},
            "queue": {"capacity": 100_000, "workers": 8},
            "deduplication": {"time_window_seconds": 0},  # every 200 is queued
        }
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
        self.log = tmp_path / "server.log"
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
        args = [sys.executable, "-m", "talon_opa.cli.main", "server", "-c", str(tmp_path / "config.yaml")]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*args, "-r", str(rules)],
                stdout=out,
                stderr=out,
                env=env,
                cwd=REPO,
            )
        self.conn: http.client.HTTPConnection | None = None
        self.statuses: Counter[int] = Counter()
        self.queued = 0
        self.problems: list[str] = []
        for _ in range(600):  # bounded: 60 s to start
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if self.request("GET", "/readyz", b"", {})[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("the server did not get ready")
        self.rss_started = rss_kib(self.proc.pid)

    def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        for attempt in range(2):  # the server closes a connection after some refusals: reconnect once
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
                continue
            if resp.will_close:
                self.conn.close()
                self.conn = None
            return resp.status, resp.getheader("Content-Type") or "", data
        raise AssertionError("unreachable")

    def metric(self, name: str) -> float:
        text = self.request("GET", "/metrics", b"", {})[2].decode()
        return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))

    def send(self, body: bytes, headers: dict[str, str], method: str = "POST") -> None:
        status, content_type, raw = self.request(method, "/", body, headers)
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

    def stop(self) -> int:
        if self.conn is not None:
            self.conn.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("fuzz"))
    try:
        yield s
    finally:
        s.stop()


# --- what is generated ----------------------------------------------------------------------------------

NASTY = st.characters(codec="utf-8") | st.sampled_from(["\n", "\r", "\x1b", "\x00", '"', "\\", "\u2028", "\x9b"])
TEXT = st.text(NASTY, max_size=24)
LEAF = st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | TEXT
JSON = st.recursive(
    LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=8
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


@pytest.mark.timeout(900)
@FUZZ_SETTINGS
@given(data=st.data())
def test_generated_alerts(server: Server, data: st.DataObject) -> None:
    body = json.dumps(data.draw(alerts()), ensure_ascii=data.draw(st.booleans())).encode()
    headers, body = data.draw(headers_and_body(body))
    server.send(body, headers)


@pytest.mark.timeout(900)
@FUZZ_SETTINGS
@given(data=st.data())
def test_raw_bodies(server: Server, data: st.DataObject) -> None:
    headers, body = data.draw(headers_and_body(data.draw(raw_bodies())))
    method = data.draw(st.sampled_from(["POST"] * 8 + ["PUT", "PATCH"]))
    server.send(body, headers, method)


def test_every_accepted_alert_was_decided_and_the_engine_is_still_ready(server: Server) -> None:
    for _ in range(600):  # bounded: until every accepted alert is finished
        if server.metric("talon_opa_queue_depth") == 0 and server.metric("talon_opa_alerts_in_flight") == 0:
            break
        time.sleep(0.1)
    decided = int(server.metric("talon_opa_decision_duration_seconds_count"))
    failed = int(server.metric("talon_opa_alerts_failed_total"))
    ready, _, ready_body = server.request("GET", "/readyz", b"", {})
    rss_after = rss_kib(server.proc.pid)
    lost = server.queued - decided - failed
    assert server.stop() == 0  # and drains cleanly
    lines = [json.loads(line) for line in server.log.read_text().splitlines()]  # every line is JSON
    errors = [line for line in lines if line["level"] in ("error", "critical")]
    print(
        f"\nfuzz: {sum(server.statuses.values())} requests, statuses {dict(sorted(server.statuses.items()))}, "
        f"queued {server.queued}, decided {decided}, reported failed {failed}, lost {lost}, "
        f"problems {len(server.problems)}, error lines {len(errors)}, log lines {len(lines)}, "
        f"engine RSS {server.rss_started} KiB ready, {rss_after} KiB after"
    )
    assert sum(server.statuses.values()) >= 2 * EXAMPLES
    assert server.problems == []
    assert lost == 0
    assert ready == 200, ready_body
    assert errors == []
