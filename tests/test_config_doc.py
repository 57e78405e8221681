"""docs/configuration.md is generated from engine/config.py and must not drift."""

from __future__ import annotations

import dataclasses

from talon_opa.core import config, config_doc
from tests.harness.paths import REPO


def test_configuration_doc_is_up_to_date() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == config_doc.markdown(), "regenerate: python -m talon_opa.core.config_doc docs/configuration.md"


def test_every_config_field_is_documented() -> None:
    docs = config_doc._field_docs()
    missing = []

    def walk(cls: type[object]) -> None:
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name == "unknown_keys":
                continue
            if not docs.get(cls.__name__, {}).get(f.name):
                missing.append(f"{cls.__name__}.{f.name}")
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default))

    walk(config.Config)
    assert missing == []
