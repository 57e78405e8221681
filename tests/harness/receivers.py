"""Test servers speaking the notifiers' documented wire formats on loopback, keeping what arrived for the
test to assert on: for Slack (no real server can run here), and beside the real servers for what those
cannot show (Loki's tenant header, Elasticsearch's authentication).

* `SlackWebhook`: a Slack incoming webhook (`POST <webhook path>`, JSON; `200 ok`, `400 invalid_payload`
  for a body that is not a JSON object, `404 no_service` for another path). Slack is a hosted service.
* `LokiPush`: Loki's push API (`POST /loki/api/v1/push`, JSON streams; `204` when accepted, `400` naming
  what is malformed, `401 no org id` without `X-Scope-OrgID` when a tenant is required). A real VictoriaLogs
  (tests/harness/victorialogs.py) proves a real server stores the push; this one checks what it cannot:
  the tenant header and Loki's label names.
* `ElasticsearchApi`: the three Elasticsearch endpoints the notifier uses: `GET /_index_template/<name>`
  (`404` until stored, then `200 {"index_templates": [...]}`), `PUT /_index_template/<name>` (refused with
  `400` unless the body is JSON with `index_patterns` and `template`, as Elasticsearch does), and
  `POST /<index>/_doc` (`201`, the document kept with the index and the template that matched it). With
  credentials set, every request without them gets `401`. A real OpenSearch node (tests/harness/
  opensearch.py) proves the template and documents are accepted and applied; it has no security plugin,
  so authentication and refusals are shown here.

Each can be told to answer a list of statuses first (`fail_next`) to play an outage.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str = ""
    seen: list[Request] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)  # statuses to answer first, in order

    async def _record(self, request: web.Request) -> Request:
        seen = Request(request.method, request.path, dict(request.headers), await request.read())
        self.seen.append(seen)
        return seen

    def _outage(self) -> web.Response | None:
        if self.fail_next:
            return web.Response(status=self.fail_next.pop(0), text="test server outage")
        return None

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        app = web.Application()
        app.add_routes(self.routes())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            yield self
        finally:
            await runner.cleanup()


@dataclass
class SlackWebhook(Receiver):
    path: str = "/services/T0TEST/B0TEST/s3cr3tW3bh00kT0k3n"

    @property
    def webhook_url(self) -> str:
        return self.url + self.path

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/{tail:.*}", self._post)]

    async def _post(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        if (outage := self._outage()) is not None:
            return outage
        if request.path != self.path:
            return web.Response(status=404, text="no_service")
        try:
            doc = seen.json()
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        if not isinstance(doc, dict) or not (doc.get("text") or doc.get("attachments")):
            return web.Response(status=400, text="no_text")
        return web.Response(text="ok")


_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass
class LokiPush(Receiver):
    tenant_required: bool = False

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/loki/api/v1/push", self._push)]

    async def _push(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        if (outage := self._outage()) is not None:
            return outage
        if self.tenant_required and not request.headers.get("X-Scope-OrgID"):
            return web.Response(status=401, text="no org id")
        if request.content_type != "application/json":
            return web.Response(status=415, text=f"unsupported content type {request.content_type}")
        try:
            problem = _push_problem(seen.json())
        except ValueError as e:
            problem = f"invalid JSON: {e}"
        if problem:
            return web.Response(status=400, text=problem)
        return web.Response(status=204)


def _push_problem(doc: Any) -> str:
    """What Loki would refuse in a JSON push body, "" when it is well formed."""
    streams = doc.get("streams") if isinstance(doc, dict) else None
    if not isinstance(streams, list) or not streams:
        return "streams: expected a non-empty list"
    for s in streams:
        labels, values = s.get("stream"), s.get("values")
        if not isinstance(labels, dict) or not labels:
            return "stream: expected a non-empty map of labels"
        for k, v in labels.items():
            if not _LABEL.fullmatch(k) or not isinstance(v, str):
                return f"invalid label {k!r}={v!r}"
        if not isinstance(values, list) or not values:
            return "values: expected a non-empty list"
        for entry in values:
            if not (isinstance(entry, list) and len(entry) in (2, 3) and str(entry[0]).isdigit()):
                return f'invalid entry {entry!r}: expected ["<unix ns>", "<line>"]'
            if not isinstance(entry[1], str):
                return f"invalid line {entry[1]!r}"
    return ""


@dataclass
class Indexed:
    index: str
    template: str  # the name of the index template that matched the index ("" when none)
    doc: dict[str, Any]


@dataclass
class ElasticsearchApi(Receiver):
    user: str = ""
    password: str = ""
    api_key: str = ""
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    documents: list[Indexed] = field(default_factory=list)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_index_template/{name}", self._get_template),
            web.put("/_index_template/{name}", self._put_template),
            web.post("/{index}/_doc", self._index),
        ]

    def _guard(self, request: web.Request) -> web.Response | None:
        if (outage := self._outage()) is not None:
            return outage
        given = request.headers.get("Authorization", "")
        wanted = []
        if self.user:
            wanted.append("Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode())
        if self.api_key:
            wanted.append(f"ApiKey {self.api_key}")
        if wanted and given not in wanted:
            return web.json_response({"error": {"type": "security_exception"}, "status": 401}, status=401)
        return None

    async def _get_template(self, request: web.Request) -> web.Response:
        await self._record(request)
        if (refused := self._guard(request)) is not None:
            return refused
        name = request.match_info["name"]
        if name not in self.templates:
            return web.json_response(
                {"error": f"index template matching [{name}] not found", "status": 404}, status=404
            )
        return web.json_response({"index_templates": [{"name": name, "index_template": self.templates[name]}]})

    async def _put_template(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        if (refused := self._guard(request)) is not None:
            return refused
        try:
            body = seen.json()
        except ValueError as e:
            return _bad("x_content_parse_exception", f"failed to parse: {e}")
        patterns = body.get("index_patterns") if isinstance(body, dict) else None
        if not isinstance(patterns, list) or not patterns:
            return _bad("action_request_validation_exception", "index patterns are missing")
        settings = (body.get("template") or {}).get("settings") or {}
        for key in ("number_of_shards", "number_of_replicas"):
            if key in settings and not (isinstance(settings[key], int) and settings[key] >= 0):
                return _bad("illegal_argument_exception", f"bad index.{key}")
        self.templates[request.match_info["name"]] = body
        return web.json_response({"acknowledged": True})

    async def _index(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        if (refused := self._guard(request)) is not None:
            return refused
        index = request.match_info["index"]
        if index != index.lower() or index.startswith(("_", "-", "+")):
            return _bad("invalid_index_name_exception", f"Invalid index name [{index}]")
        try:
            doc = seen.json()
        except ValueError as e:
            return _bad("mapper_parsing_exception", f"failed to parse: {e}")
        matched = next(
            (name for name, t in self.templates.items() if any(fnmatch.fnmatch(index, p) for p in t["index_patterns"])),
            "",
        )
        self.documents.append(Indexed(index, matched, doc))
        n = len(self.documents)
        return web.json_response({"_index": index, "_id": str(n), "result": "created", "_seq_no": n - 1}, status=201)


def _bad(kind: str, reason: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "reason": reason}, "status": 400}, status=400)
