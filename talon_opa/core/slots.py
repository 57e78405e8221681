"""A cheaper `__init__` for the frozen slots dataclasses built once per alert (the alert, its work item...).

A frozen dataclass's generated `__init__` sets each field with `object.__setattr__(self, "name", value)`,
looking the field up by name on every call: twice the time of the rest of the construction. `slot_init`
gives the class an `__init__` with the same signature (defaults and default factories included) that calls
each slot's own descriptor instead. The class stays frozen: only `__init__` writes its slots.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, cast

T = TypeVar("T")


def slot_init(cls: type[T]) -> type[T]:
    """Apply after `@dataclass(frozen=True, slots=True)`; TypeError for a class it cannot build the same way."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: slot_init takes a dataclass(frozen=True, slots=True)")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: slot_init does not call __post_init__")
    names: dict[str, Any] = {"_NO_VALUE": _NO_VALUE}
    args, lines = [], []
    for i, f in enumerate(dataclasses.fields(cast(Any, cls))):
        if not f.init or f.kw_only:
            raise TypeError(f"{cls.__name__}.{f.name}: slot_init takes positional fields set by __init__ only")
        names[f"_set{i}"] = cls.__dict__[f.name].__set__
        value = f.name
        if f.default is not dataclasses.MISSING:
            names[f"_default{i}"] = f.default
            args.append(f"{f.name}=_default{i}")
        elif f.default_factory is not dataclasses.MISSING:
            names[f"_factory{i}"] = f.default_factory
            args.append(f"{f.name}=_NO_VALUE")
            value = f"_factory{i}() if {f.name} is _NO_VALUE else {f.name}"
        else:
            args.append(f.name)
        lines.append(f"    _set{i}(self, {value})")
    source = f"def __init__(self, {', '.join(args)}):\n" + "\n".join(lines or ["    pass"]) + "\n"
    exec(source, names)  # the source is made of the class's own field names
    init = names["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


class _NoValue:
    def __repr__(self) -> str:
        return "<factory default>"


_NO_VALUE = _NoValue()
