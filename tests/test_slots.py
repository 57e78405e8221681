"""`slot_init`: the frozen dataclasses built per alert are built exactly as their dataclass `__init__` builds them."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

import pytest

from talon_opa.core.events import Alert
from talon_opa.core.slots import slot_init
from talon_opa.engine.accept import Admission
from talon_opa.engine.dedup import Seen
from talon_opa.engine.work import WorkItem
from talon_opa.opa.plan import Plan


@dataclass(frozen=True, slots=True)
class Plain:
    required: str
    number: int = 7
    items: list[int] = field(default_factory=list)
    table: dict[str, int] = field(default_factory=lambda: {"a": 1})
    last: str | None = None


@slot_init
@dataclass(frozen=True, slots=True)
class Fast:
    required: str
    number: int = 7
    items: list[int] = field(default_factory=list)
    table: dict[str, int] = field(default_factory=lambda: {"a": 1})
    last: str | None = None


def fields_of(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [(("x",), {}), (("x", 1, [2], {"b": 3}, "z"), {}), ((), {"required": "x", "last": "z"}), (("x",), {"items": []})],
)
def test_the_same_object_as_the_dataclass_init_builds(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    assert fields_of(Fast(*args, **kwargs)) == fields_of(Plain(*args, **kwargs))
    assert repr(Fast(*args, **kwargs)) == repr(Plain(*args, **kwargs)).replace("Plain", "Fast")


def test_defaults_from_factories_are_new_each_time_and_the_object_stays_frozen() -> None:
    a, b = Fast("x"), Fast("x")
    assert a == b
    assert a.items is not b.items
    assert a.table is not b.table
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.number = 8  # type: ignore[misc]
    assert list(inspect.signature(Fast).parameters) == [f.name for f in dataclasses.fields(Plain)]


@pytest.mark.parametrize(("args", "kwargs"), [((), {}), (("x",), {"required": "y"}), (("x",), {"unknown": 1})])
def test_wrong_arguments_are_refused_as_the_dataclass_refuses_them(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(TypeError):
        Plain(*args, **kwargs)
    with pytest.raises(TypeError):
        Fast(*args, **kwargs)


@pytest.mark.parametrize("cls", [Alert, WorkItem, Admission, Seen, Plan])
def test_the_engines_classes_set_each_field_from_its_own_argument(cls: type[Any]) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    values = [object() for _ in names]  # one of its own per field: a field set from another's argument shows
    built = cls(*values)
    assert [getattr(built, n) for n in names] == values
    assert cls(**dict(zip(names, values, strict=True))) == built
    assert list(inspect.signature(cls).parameters) == names
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(built, names[0], None)


def test_only_frozen_slots_dataclasses_without_post_init_or_keyword_only_fields() -> None:
    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(frozen=True, slots=True)
    class PostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True, slots=True, kw_only=True)
    class KeywordOnly:
        a: int

    for cls in (Mutable, NoSlots, PostInit, KeywordOnly):
        with pytest.raises(TypeError):
            slot_init(cls)
