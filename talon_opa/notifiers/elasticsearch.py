"""elasticsearch — index each result as a document, in a dated index that a working template describes.

Talon's two breakages are fixed here: its index template is invalid JSON (and lacks `index_patterns`), and
its document writes go without the configured credentials and headers. Here the template is created when
missing, before the first document (`GET` then `PUT /_index_template/<index>`, retried on the next
notification if that fails), and every request carries the basic auth or API key and `custom_headers`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from talon_opa.notifiers import _http, webhook
from talon_opa.plugins.params import Decoding, ParamProblem, between, http_url, one_of, param
from talon_opa.plugins.runtime import Notifier
from talon_opa.plugins.spec import Spec

if TYPE_CHECKING:
    from talon_opa.plugins.clients import Clients
    from talon_opa.plugins.notes import Note

SUFFIXES = {"daily": "-%Y.%m.%d", "monthly": "-%Y.%m", "annually": "-%Y", "none": ""}
WRITTEN = frozenset({200, 201})


def _text(ignore_above: int) -> dict[str, Any]:
    return {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": ignore_above}}}


# Talon's mapping (text with a keyword sub-field), plus `time` as a date and the ids as keywords.
MAPPINGS: dict[str, Any] = {
    "properties": {
        "time": {"type": "date"},
        "trace_id": {"type": "keyword"},
        "action": _text(128),
        "actionner": {"type": "keyword"},
        "category": {"type": "keyword"},
        "error": _text(256),
        "event": _text(1024),
        "message": {"type": "keyword"},
        "output": _text(2048),
        "output_target": {"type": "keyword"},
        "objects": {"properties": {"Namespace": _text(128), "Pod": _text(128)}},
        "rule": _text(128),
        "status": {"type": "keyword"},
    }
}


def index_name(settings: ElasticsearchSettings, now: dt.datetime) -> str:
    """`<index>-YYYY.MM.DD` (daily), `-YYYY.MM` (monthly), `-YYYY` (annually) or `<index>` (none), in UTC."""
    return settings.index + now.astimezone(dt.UTC).strftime(SUFFIXES[settings.suffix])


def template(settings: ElasticsearchSettings) -> dict[str, Any]:
    """The composable index template for the notifier's indices (`PUT /_index_template/<index>`)."""
    patterns = [settings.index] if settings.suffix == "none" else [f"{settings.index}-*"]
    return {
        "index_patterns": patterns,
        "template": {
            "settings": {
                "number_of_shards": settings.number_of_shards,
                "number_of_replicas": settings.number_of_replicas,
            },
            "mappings": MAPPINGS,
        },
        "_meta": {"created_by": "talon-opa"},
    }


def document(note: Note, now: dt.datetime) -> dict[str, Any]:
    """Talon's LogLine with `time` (RFC 3339, UTC) first."""
    return {"time": now.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"), **webhook.body(note)}


@dataclass(frozen=True, kw_only=True, slots=True)
class ElasticsearchSettings:
    decoding: ClassVar[Decoding] = "settings"

    url: str = param(doc="Elasticsearch base URL", required=True, check=http_url)
    user: str = param("", doc="basic-auth user (with password)")
    password: str = param("", doc="basic-auth password (with user)", secret=True)
    api_key: str = param(
        "", doc="API key, sent as `Authorization: ApiKey <api_key>` (instead of user/password)", secret=True
    )
    index: str = param("falco-talon", doc="index name (before the date suffix)")
    suffix: str = param(
        "daily",
        doc="date suffix of the index: daily, monthly, annually or none",
        check=one_of("daily", "monthly", "annually", "none"),
    )
    number_of_shards: int = param(3, doc="shards of the index template", check=between(1))
    number_of_replicas: int = param(3, doc="replicas of the index template", check=between(0))
    create_index_template: bool = param(True, doc="create the index template when it is missing")
    custom_headers: Mapping[str, str] = param({}, doc="extra headers", secret=True)

    def problems(self) -> list[ParamProblem]:
        if self.api_key and self.user:
            return [ParamProblem("api_key", "is set with user/password", "use either api_key or user and password")]
        if self.index != self.index.lower() or not self.index or self.index.startswith(("-", "_", "+")):
            return [
                ParamProblem(
                    "index",
                    f"{self.index!r} is not a valid index name",
                    "Elasticsearch wants lower case, not starting with -, _ or +",
                )
            ]
        return []


class Elasticsearch(Notifier[ElasticsearchSettings]):
    spec: ClassVar[Spec[ElasticsearchSettings]] = Spec(
        name="elasticsearch",
        kind="notifier",
        clients=("http",),
        description=(
            "Index each action and output result as a document (Talon's JSON with time and trace_id) into a"
            " dated Elasticsearch index, creating its index template when missing"
        ),
        params=ElasticsearchSettings,
        example="""\
notifiers:
  elasticsearch:
    url: https://elasticsearch.example.com:9200
    user: talon
    password: s3cret
    suffix: monthly
""",
    )

    def __init__(self, clients: Clients, settings: ElasticsearchSettings) -> None:
        super().__init__(clients, settings)
        self._template_ready = not settings.create_index_template
        self._template_lock = asyncio.Lock()

    def _headers(self) -> dict[str, str]:
        """Every request's headers: Talon sends credentials and custom headers only when checking the template."""
        s = self.settings
        headers = {"Content-Type": "application/json", "User-Agent": "falco-talon", **s.custom_headers}
        if s.api_key:
            headers["Authorization"] = f"ApiKey {s.api_key}"
        elif s.user and s.password:
            headers.update(_http.basic_auth(s.user, s.password))
        return headers

    async def _ensure_template(self) -> None:
        async with self._template_lock:
            if self._template_ready:
                return
            s = self.settings
            headers = self._headers()
            url = _http.under(s.url, f"/_index_template/{quote(s.index, safe='')}")
            found = await _http.send(
                self.clients.http,
                "GET",
                url,
                notifier="elasticsearch",
                headers=headers,
                ok={200, 404},
                hint="check notifiers.elasticsearch.url and its credentials (user/password or api_key)",
            )
            if found.status == 404:
                await _http.send(
                    self.clients.http,
                    "PUT",
                    url,
                    notifier="elasticsearch",
                    data=json.dumps(template(s)).encode(),
                    headers=headers,
                    hint="the index template was refused: check number_of_shards/number_of_replicas, or set "
                    "create_index_template: false and manage it yourself",
                )
            self._template_ready = True

    async def notify(self, note: Note) -> None:
        if not self._template_ready:
            await self._ensure_template()
        s = self.settings
        now = dt.datetime.now(dt.UTC)
        headers = self._headers()
        await _http.send(
            self.clients.http,
            "POST",
            _http.under(s.url, f"/{quote(index_name(s, now), safe='')}/_doc"),
            notifier="elasticsearch",
            data=json.dumps(document(note, now)).encode(),
            headers=headers,
            ok=WRITTEN,
            hint="the document was refused: check notifiers.elasticsearch.url, index and credentials",
        )
