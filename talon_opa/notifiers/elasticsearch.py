"""elasticsearch — index each result into Elasticsearch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from talon_opa.plugins.params import Decoding, between, http_url, one_of, param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Spec


@dataclass(frozen=True, kw_only=True, slots=True)
class ElasticsearchSettings:
    decoding: ClassVar[Decoding] = "settings"

    url: str = param(doc="Elasticsearch base URL", required=True, check=http_url)
    user: str = param("", doc="basic-auth user")
    password: str = param("", doc="basic-auth password", secret=True)
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


class Elasticsearch(Planned):
    spec: ClassVar[Spec[ElasticsearchSettings]] = Spec(
        name="elasticsearch",
        kind="notifier",
        clients=("http",),
        description="Index each action and output result as a document into Elasticsearch",
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
