"""`generated_code.cached`: dataclasses and attrs run the code their generated source compiles to, kept
from an earlier start; what is kept is found by that exact source, and a damaged table is compiled anew."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from types import CodeType
from typing import Any

import attr
import pytest

from talon_opa.core import generated_code


def define() -> type[Any]:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Point:
        x: int
        y: int = 2
        tags: tuple[str, ...] = dataclasses.field(default_factory=tuple)

    return Point


def functions(code: CodeType) -> list[str]:
    """The names of the functions a compiled source defines."""
    return [c.co_name for c in code.co_consts if isinstance(c, CodeType)] + [
        n for c in code.co_consts if isinstance(c, CodeType) for n in functions(c)
    ]


def check(point: type[Any]) -> None:
    """What the generated methods do: build, compare, hash, print, stay frozen."""
    p = point(1)
    assert (p.x, p.y, p.tags) == (1, 2, ())
    assert p == point(1, 2)
    assert p != point(1, 3)
    assert hash(p) == hash(point(1, 2))
    assert repr(p).endswith("Point(x=1, y=2, tags=())")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 3


def test_a_start_runs_the_code_kept_by_the_one_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = tmp_path / "table.methods"
    with generated_code.cached(path):
        check(define())
    table = generated_code.read(path)
    names = sorted(n for code in table.values() for n in functions(code) if n != "__create_fn__")
    assert names == ["__delattr__", "__eq__", "__hash__", "__init__", "__repr__", "__setattr__"]
    assert not hasattr(dataclasses, "exec"), "the library's own exec is back once outside"

    # the kept code is what runs: a __repr__ swapped in the table shows up in the class
    (repr_key,) = [k for k, code in table.items() if "__repr__" in functions(code)]
    create = next(c for c in table[repr_key].co_consts if isinstance(c, CodeType))
    args = ", ".join(create.co_varnames[: create.co_argcount + create.co_kwonlyargcount])
    other = f"def __create_fn__({args}):\n def __repr__(self):\n  return 'from the table'\n return __repr__"
    swapped = {**table, repr_key: compile(other, "<string>", "exec")}
    generated_code.write(path, swapped)
    with generated_code.cached(path):
        point = define()
    assert repr(point(1)) == "from the table"
    assert generated_code.read(path) == swapped, "nothing new compiled: the table is not written again"


def test_a_damaged_or_foreign_table_is_compiled_anew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = tmp_path / "table.methods"
    with generated_code.cached(path):
        define()
    good = path.read_bytes()
    expected = generated_code.read(path).keys()
    assert expected
    for damaged in (good[: len(good) // 2], b"\0\0\0\0" + good[4:], b""):
        path.write_bytes(damaged)
        assert generated_code.read(path) == {}
        with generated_code.cached(path):
            check(define())
        assert generated_code.read(path).keys() == expected, damaged[:8]


def test_nothing_is_written_without_bytecode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    path = tmp_path / "table.methods"
    with generated_code.cached(path):
        check(define())
    assert not path.exists()


def test_attrs_classes_are_kept_unless_hashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """attrs writes a hash of the class name, different in each process, into `__hash__`'s source: a class
    with a `__hash__` is compiled at each start."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = tmp_path / "table.methods"
    with generated_code.cached(path):

        @attr.define
        class Pair:
            a: int
            b: str = "b"

        @attr.frozen
        class Frozen:
            a: int

    assert Pair(1) == Pair(1, "b")
    assert repr(Pair(1)) == "Pair(a=1, b='b')"
    assert Frozen(1) == Frozen(1)
    assert hash(Frozen(1)) == hash(Frozen(1))
    kept = sorted(n for code in generated_code.read(path).values() for n in functions(code))
    assert kept == ["__eq__", "__init__", "__repr__"], kept  # Pair's; not Frozen's
