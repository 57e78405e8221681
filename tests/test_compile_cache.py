"""`compile_cache.cached`: dataclasses and attrs run the code their generated source compiles to, and `re`
the program it makes of a pattern, kept from an earlier start; what is kept is found by that exact source
(pattern and flags), and a damaged table is compiled anew."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from types import CodeType
from typing import Any

import attr
import pytest

from talon_opa.core import compile_cache


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
    path = tmp_path / "table.compiled"
    with compile_cache.cached(path):
        check(define())
    table = compile_cache.read(path).methods
    names = sorted(n for code in table.values() for n in functions(code) if n != "__create_fn__")
    assert names == ["__delattr__", "__eq__", "__hash__", "__init__", "__repr__", "__setattr__"]
    assert not hasattr(dataclasses, "exec"), "the library's own exec is back once outside"

    # the kept code is what runs: a __repr__ swapped in the table shows up in the class
    (repr_key,) = [k for k, code in table.items() if "__repr__" in functions(code)]
    create = next(c for c in table[repr_key].co_consts if isinstance(c, CodeType))
    args = ", ".join(create.co_varnames[: create.co_argcount + create.co_kwonlyargcount])
    other = f"def __create_fn__({args}):\n def __repr__(self):\n  return 'from the table'\n return __repr__"
    swapped = {**table, repr_key: compile(other, "<string>", "exec")}
    compile_cache.write(path, compile_cache.Table(swapped))
    with compile_cache.cached(path):
        point = define()
    assert repr(point(1)) == "from the table"
    assert compile_cache.read(path).methods == swapped, "nothing new compiled: the table is not written again"


def test_a_damaged_or_foreign_table_is_compiled_anew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = tmp_path / "table.compiled"
    with compile_cache.cached(path):
        define()
    good = path.read_bytes()
    expected = compile_cache.read(path).methods.keys()
    assert expected
    for damaged in (good[: len(good) // 2], b"\0\0\0\0" + good[4:], b""):
        path.write_bytes(damaged)
        assert len(compile_cache.read(path)) == 0
        with compile_cache.cached(path):
            check(define())
        assert compile_cache.read(path).methods.keys() == expected, damaged[:8]


def test_nothing_is_written_without_bytecode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    path = tmp_path / "table.compiled"
    with compile_cache.cached(path):
        check(define())
    assert not path.exists()


def define_attrs() -> tuple[type[Any], type[Any], type[Any]]:
    @attr.define
    class Pair:
        a: int
        b: str = "b"

    @attr.frozen
    class Frozen:
        a: int
        tags: tuple[str, ...] = ()

    @attr.frozen
    class Empty:  # hash((number,)): a tuple of constants, folded into one
        pass

    return Pair, Frozen, Empty


def test_attrs_classes_run_the_code_attrs_compiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled with attrs' own `from __future__` flags. attrs writes a hash of the class name, different in
    each process, into `__hash__`'s source: kept for the shapes such a number has (19 or 18 digits, either
    sign), the class's own number put back: the same code as attrs' own compile."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = tmp_path / "table.compiled"
    plain = define_attrs()  # compiled by attrs itself
    built = []
    for _ in range(2):  # compiled and kept, then from the table
        with compile_cache.cached(path):
            built.append(define_attrs())
        if len(built) == 1:
            first = path.read_bytes()
    assert path.read_bytes() == first, "the second found everything: nothing written"
    kept = [n for code in compile_cache.read(path).methods.values() for n in functions(code)]
    assert sorted(set(kept)) == ["__eq__", "__hash__", "__init__", "__repr__"], kept
    assert kept.count("__hash__") == 2 * 4, "Frozen's and Empty's, in 4 shapes"
    for pair, frozen, empty in built:
        assert pair(1) == pair(1, "b")
        assert repr(pair(1)) == "Pair(a=1, b='b')"
        assert frozen(1) == frozen(1, ())
        for ours, theirs in zip((pair, frozen, empty), plain, strict=True):
            for method in ("__init__", "__eq__", "__repr__"):
                assert getattr(ours, method).__code__ == getattr(theirs, method).__code__, method
        assert hash(frozen(1)) == hash(plain[1](1))  # the same number: the same hash as attrs' own
        assert hash(empty()) == hash(plain[2]())
        assert frozen.__hash__.__code__ == plain[1].__hash__.__code__
        assert empty.__hash__.__code__ == plain[2].__hash__.__code__
    assert compile("1 + 1", "<x>", "eval") is not None, "the builtin compile is back once outside"


HASH_SCRIPT = (
    "def __hash__(self):\n        return hash((\n                {},\n                self.a,\n            ))\n"
)


def test_an_attrs_number_of_a_rare_shape_keeps_the_usual_shapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 time in 100 a number has 17 digits or fewer: that start compiles it, and keeps the usual shapes."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = tmp_path / "table.compiled"
    name = "<attrs generated methods tests.Rare>"
    for number in (12_345_678_901_234_567, -1_234_567_890_123_456_789, 987_654_321_098_765_432):
        source = HASH_SCRIPT.format(number)
        with compile_cache.cached(path):
            ours = vars(attr._make)["compile"](source, name, "exec")  # as attrs calls it, from a module like this
        assert ours == compile(source, name, "exec")
        assert ours.co_consts[0].co_consts == compile(source, name, "exec").co_consts[0].co_consts
        if number == 12_345_678_901_234_567:
            first = path.read_bytes()
            assert len(compile_cache.read(path).methods) == 4
    assert path.read_bytes() == first, "the later numbers were found in their shapes: nothing written"


PATTERNS = [
    (r"(?P<word>\w+)-(\d+)", 0),
    (r"[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]", 0),
    (r"(?i)straße|ǅ", 0),
    (r"^a.b$", re.MULTILINE | re.DOTALL),
    (rb"(?x) [a-z]+ \s* = \s* (?P<v>.*)", 0),
    (r"x{2,5}?(?=y)|(?<!z)w", re.ASCII | re.IGNORECASE),
]


def test_regular_expressions_compile_to_the_programs_re_makes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.setattr(compile_cache, "_NEW_EACH_TIME", 0)  # these few expressions are worth a new table
    path = tmp_path / "table.compiled"
    ours = []
    for _ in range(2):  # compiled and kept, then from the table
        re.purge()
        with compile_cache.cached(path):
            ours.append([re.compile(p, f) for p, f in PATTERNS])
    assert set(compile_cache.read(path).programs) == {(p, int(f)) for p, f in PATTERNS}
    re.purge()
    theirs = [re.compile(p, f) for p, f in PATTERNS]
    for first, second, plain in zip(*ours, theirs, strict=True):
        assert first == plain  # same pattern, flags and program
        assert second == plain
        assert second.groupindex == plain.groupindex
        assert second.groups == plain.groups
    assert ours[1][0].match("abc-12").group("word", 2) == ("abc", "12")
    assert ours[1][2].match("STRASSE") is None
    assert ours[1][2].match("Straße") is not None

    # the kept program is what runs: another program under a pattern's key shows up in its matches
    table = compile_cache.read(path)
    table.programs[(r"(?P<word>\w+)-(\d+)", 0)] = table.programs[(r"^a.b$", int(re.MULTILINE | re.DOTALL))]
    compile_cache.write(path, table)
    re.purge()
    with compile_cache.cached(path):
        swapped = re.compile(r"(?P<word>\w+)-(\d+)")
    re.purge()
    assert swapped.match("a\nb") is not None
    assert swapped.match("abc-12") is None
    assert re.compile(r"(?P<word>\w+)-(\d+)").match("abc-12"), "re's own compile is back once outside"


def test_expressions_for_the_locale_or_debugging_are_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.setattr(compile_cache, "_NEW_EACH_TIME", 0)
    path = tmp_path / "table.compiled"
    re.purge()
    with compile_cache.cached(path):
        assert re.compile(rb"\w+", re.LOCALE).match(b"abc")
        assert re.compile(r"\d+").match("12")
    assert set(compile_cache.read(path).programs) == {(r"\d+", 0)}
