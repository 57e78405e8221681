"""Parameter decoding works out each class's fields and types once: every class keeps its own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from talon_opa.plugins import params
from talon_opa.plugins.params import ParamsInvalid


@dataclass(frozen=True, kw_only=True)
class Base:
    size: int = params.param(1, doc="a number")
    labels: Mapping[str, str] = params.param({"a": "b"}, doc="a map")


@dataclass(frozen=True, kw_only=True)
class Child(Base):
    size: str = params.param("x", doc="a text in the subclass")  # type: ignore[assignment]
    Extra: bool = params.param(False, doc="a flag only the subclass has")


def test_each_class_decodes_with_its_own_fields_and_types() -> None:
    assert params.decode(Base, {"size": 3}).size == 3
    assert params.decode(Child, {"size": "3", "extra": True}) == Child(size="3", Extra=True)
    with pytest.raises(ParamsInvalid) as e:
        params.decode(Base, {"size": "3"})  # the subclass's str did not leak into the base
    assert [p.field for p in e.value.problems] == ["size"]
    assert params.unknown_keys(Base, {"extra": True, "SIZE": 2}) == ["extra"]
    assert params.type_name(Child, params.fields(Child)[0]) == "string"


def test_defaults_are_fresh_each_time() -> None:
    first = params.defaults(Base)
    first["labels"]["a"] = "changed"
    assert params.defaults(Base) == {"size": 1, "labels": {"a": "b"}}
    assert params.decode(Base, {}).labels == {"a": "b"}
