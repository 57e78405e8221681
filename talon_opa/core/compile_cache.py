"""What every start compiles again, the same way, compiled once and kept beside Python's bytecode.

dataclasses and attrs write each class's `__init__`, `__repr__`, `__eq__`... as source text and compile it
when the class is defined, and modules compile their regular expressions when imported: at `talon-opa
server`'s start some 200 classes (the engine's, aiohttp's) and 150 expressions (PyYAML's, http.client's,
aiohttp's, the engine's), about 100 ms of CPU, a third of the imports. Inside `cached()` they are compiled
through a table kept from an earlier start: the code of a method is what `compile` returns for that exact
source text, file name and `from __future__` flags (attrs' `__hash__`, whose source holds a number that
changes with each process, is kept with a stand-in and gets its number back: `_hashed`); the program of an
expression is the one `re` makes of that pattern and those flags, kept only once `re`'s own compile of it
was found equal (so a Python whose `re` differs keeps none).

The table is one marshal file in the bytecode cache of this package (`__pycache__`, or PYTHONPYCACHEPREFIX)
named for the Python that wrote it, as a .pyc is. It is written when a start compiled something new, unless
bytecode is not written (PYTHONDONTWRITEBYTECODE), and not for the few expressions a start makes anew
(`_NEW_EACH_TIME`); a table that cannot be read is ignored (everything is compiled as before, and a new
one written); where it cannot be written (a read-only install), every start compiles as before.
"""

from __future__ import annotations
import __future__

import _sre  # type: ignore[import-not-found]  # the constructor `re` gives its programs to
import builtins
import contextlib
import dataclasses
import hashlib
import importlib.util
import marshal
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any

_compiler: Any = getattr(re, "_compiler")  # noqa: B009 (private: re's own compile, replaced meanwhile)
_parser: Any = getattr(re, "_parser")  # noqa: B009

# a regular expression's flags, program, group count, group index and index group: `_sre.compile`'s arguments
_Program = tuple[int, list[int], int, dict[str, int], tuple[str | None, ...]]


class Table:
    """The methods (by a sha256 of their flags, file name and source) and the expressions (by pattern and
    flags)."""

    def __init__(
        self,
        methods: dict[bytes, CodeType] | None = None,
        programs: dict[tuple[str | bytes, int], _Program] | None = None,
    ) -> None:
        self.methods = methods if methods is not None else {}
        self.programs = programs if programs is not None else {}

    def __len__(self) -> int:
        return len(self.methods) + len(self.programs)


def key_of(source: str, filename: str, flags: int) -> bytes:
    """The table's key of one method's compile."""
    return hashlib.sha256(f"{flags}\0{filename}\0{source}".encode()).digest()


def table_path() -> Path | None:
    """Where the table is kept: this module's bytecode cache folder; None when Python keeps no bytecode."""
    cached = importlib.util.cache_from_source(__file__) if sys.implementation.cache_tag else None
    return Path(cached).with_suffix(".compiled") if cached else None


def read(path: Path) -> Table:
    """The table kept at `path`; empty when there is none, or it was written by another Python or is damaged."""
    try:
        data = path.read_bytes()
    except OSError:
        return Table()
    magic = importlib.util.MAGIC_NUMBER
    if not data.startswith(magic):
        return Table()
    try:
        version, methods, programs = marshal.loads(data[len(magic) :])
    except (EOFError, ValueError, TypeError):
        return Table()
    if version != sys.version or not all(isinstance(d, dict) for d in (methods, programs)):
        return Table()
    if not all(isinstance(c, CodeType) for c in methods.values()):
        return Table()
    return Table(methods, programs)


def write(path: Path, table: Table) -> None:
    """The table, replacing the file at once (a start reading it meanwhile sees the old or the new one)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = marshal.dumps((sys.version, table.methods, table.programs))
        tmp.write_bytes(importlib.util.MAGIC_NUMBER + data)
        os.replace(tmp, path)
    except (OSError, ValueError):  # ValueError: something marshal cannot write (then nothing is kept)
        with contextlib.suppress(OSError):
            tmp.unlink()


_ATTRS = "<attrs generated "  # the file name of what attrs compiles
# attrs writes a number that changes with each process (a hash of the class name) into `__hash__`'s source,
# on a line of its own: kept with a stand-in of the same shape in its place (its length is in the code's
# positions), the number put back into the code. A hash of 64 bits has 19 or 18 digits but for 1 time in 100:
# those four shapes are kept (whatever this start's number); a number of another shape is compiled
_VARIES = "def __hash__"
_TYPE_HASH = re.compile(r"(hash\(\(\n\s+)(-?\d+)(,\n)")
_SHAPES = ("7" * 19, "-" + "7" * 19, "7" * 18, "-" + "7" * 18)
_DIGIT = re.compile(r"\d")
# the compiler flags of `from __future__` imports, which `exec(source)` and `compile(source, ...)` inherit
# from the code that calls them
_FUTURE_FLAGS = 0
for _name in __future__.all_feature_names:
    _FUTURE_FLAGS |= getattr(__future__, _name).compiler_flag
# a few expressions are new at every start: email's header parser builds them from sets, whose order changes
# from one process to the next; a start that found all but these few does not write the table again
_NEW_EACH_TIME = 8
# not kept: DEBUG prints the program as it is compiled; LOCALE is for the locale of the moment
_NOT_KEPT = re.DEBUG | re.LOCALE


class _Compiler:
    """Compiles through the table; what is missing is compiled as the library would, then kept."""

    def __init__(self, table: Table, re_compile: Any) -> None:
        self._compile: Callable[..., CodeType] = builtins.compile
        self.table = table
        self.used = Table()  # what is written back: the table of this start, no stale entry
        self.added = 0  # methods
        self.added_programs = 0
        self._re_compile = re_compile

    def code(self, source: str, filename: str, flags: int) -> CodeType:
        """`source` compiled as the library's own `exec(source)` or `compile(source, filename, "exec")` would:
        with the `from __future__` flags of the library's module (`flags`), which they inherit."""
        key = key_of(source, filename, flags)
        code = self.table.methods.get(key)
        if code is None:
            code = self._compile(source, filename, "exec", flags, dont_inherit=True)
            self.added += 1
        self.used.methods[key] = code
        return code

    def exec_(self, source: Any, globals: Any = None, locals: Any = None) -> None:
        """`exec` as dataclasses calls it: the source text of one function, its globals and a namespace."""
        if isinstance(source, str):
            source = self.code(source, "<string>", _caller_flags())
        builtins.exec(source, globals, locals)

    def compile_(self, source: Any, filename: Any, mode: str, *args: Any, **kwargs: Any) -> Any:
        """`compile`, as attrs calls it for its methods: `compile(script, "<attrs generated ...>", "exec")`."""
        flags = _caller_flags()
        attrs = isinstance(filename, str) and filename.startswith(_ATTRS) and isinstance(source, str)
        if not attrs or mode != "exec" or args or kwargs:  # as the builtin: the caller's flags unless dont_inherit
            own_flags = args[0] if args else kwargs.pop("flags", 0)
            dont_inherit = args[1] if len(args) > 1 else kwargs.pop("dont_inherit", False)
            flags = own_flags | (0 if dont_inherit else flags)
            return self._compile(source, filename, mode, flags, True, *args[2:], **kwargs)
        if _VARIES in source:
            return self._hashed(source, filename, flags)
        return self.code(source, filename, flags)

    def _hashed(self, source: str, filename: str, flags: int) -> CodeType:
        """An attrs class's methods with a `__hash__`: kept for each shape of its number (`_SHAPES`)."""
        found = _TYPE_HASH.search(source)
        if found is None:
            return self._compile(source, filename, "exec", flags, dont_inherit=True)
        before, after = source[: found.start(2)], source[found.end(2) :]
        base = key_of(f"{before}#{after}", filename, flags)
        keys = {stand_in: base + stand_in.encode() for stand_in in _SHAPES}
        shape = _DIGIT.sub("7", found.group(2))
        kept = [self.table.methods.get(k) for k in keys.values()]
        if all(code is not None for code in kept):
            self.used.methods.update(zip(keys.values(), kept, strict=True))  # type: ignore[arg-type]
            if shape in keys:
                return _with_const(self.table.methods[keys[shape]], int(shape), int(found.group(2)))
            return self._compile(source, filename, "exec", flags, dont_inherit=True)
        codes = {}
        for stand_in in _SHAPES:  # each checked: another number of that shape put in gives that number's code
            code, other = (
                self._compile(f"{before}{n}{after}", filename, "exec", flags, dont_inherit=True)
                for n in (stand_in, stand_in.replace("7", "8"))
            )
            if _with_const(code, int(stand_in), int(stand_in.replace("7", "8"))) != other:
                return self._compile(source, filename, "exec", flags, dont_inherit=True)
            codes[keys[stand_in]] = code
        own = self._compile(source, filename, "exec", flags, dont_inherit=True)
        if shape in keys and _with_const(codes[keys[shape]], int(shape), int(found.group(2))) != own:
            return own
        self.used.methods.update(codes)
        self.added += 1
        return own

    def regex(self, pattern: Any, flags: Any = 0) -> Any:
        """`re._compiler.compile` (what `re.compile` calls when its own cache misses)."""
        if not isinstance(pattern, str | bytes) or flags & _NOT_KEPT:
            return self._re_compile(pattern, flags)
        key = (pattern, int(flags))
        program = self.table.programs.get(key)
        if program is None:
            compiled = self._re_compile(pattern, flags)
            program = _program(pattern, flags)
            if program is None or _sre.compile(pattern, *program) != compiled:  # equal: pattern, flags, program
                return compiled
            self.added_programs += 1
        self.used.programs[key] = program
        return _sre.compile(pattern, *program)


def _with_const(code: CodeType, old: int, new: int) -> CodeType:
    """The code with the integer constant `old` replaced by `new` (in the functions it defines too)."""
    consts = tuple(_replaced(c, old, new) for c in code.co_consts)
    changed = any(a is not b for a, b in zip(consts, code.co_consts, strict=True))
    return code.replace(co_consts=consts) if changed else code


def _replaced(const: Any, old: int, new: int) -> Any:
    if isinstance(const, CodeType):
        return _with_const(const, old, new)
    if type(const) is tuple:  # a tuple of constants folded into one (`hash((number,))` of a class without fields)
        items = tuple(_replaced(c, old, new) for c in const)
        return items if any(a is not b for a, b in zip(items, const, strict=True)) else const
    return new if type(const) is int and const == old else const


def _caller_flags() -> int:
    """The `from __future__` flags of the library code calling our `exec` or `compile` (two frames up)."""
    return sys._getframe(2).f_code.co_flags & _FUTURE_FLAGS


def _program(pattern: str | bytes, flags: int) -> _Program | None:
    """What `re` gives `_sre.compile` for this pattern; None if this Python's `re` is not as expected."""
    try:
        parsed = _parser.parse(pattern, flags)
        code = _compiler._code(parsed, flags)
        groupindex = dict(parsed.state.groupdict)
        indexgroup: list[str | None] = [None] * parsed.state.groups
        for name, i in groupindex.items():
            indexgroup[i] = name
        return (
            int(flags | parsed.state.flags),
            [int(op) for op in code],
            parsed.state.groups - 1,
            groupindex,
            tuple(indexgroup),
        )
    except Exception:  # another Python's internals: then nothing is kept
        return None


def _attrs_make() -> ModuleType | None:
    """attrs' module that compiles its methods (imported now: aiohttp imports it anyway), if installed."""
    try:
        import attr._make as make
    except ImportError:
        return None
    return make


@contextlib.contextmanager
def cached(path: Path | None = None) -> Iterator[None]:
    """While inside, dataclasses, attrs and `re` compile through the kept table.

    Only for single-threaded imports: meanwhile the names `exec` and `compile` are set in dataclasses and in
    attrs (a module's own name is found before the builtin), and `re._compiler.compile` is replaced.
    """
    path = path if path is not None else table_path()
    compiler = _Compiler(read(path) if path is not None else Table(), _compiler.compile)
    make = _attrs_make()
    setattr(dataclasses, "exec", compiler.exec_)  # noqa: B010
    if make is not None:
        setattr(make, "compile", compiler.compile_)  # noqa: B010
    _compiler.compile = compiler.regex
    try:
        yield
    finally:
        _compiler.compile = compiler._re_compile
        delattr(dataclasses, "exec")
        if make is not None:
            delattr(make, "compile")
        new = compiler.added or compiler.added_programs > _NEW_EACH_TIME
        if new and path is not None and not sys.dont_write_bytecode:
            write(path, compiler.used)
