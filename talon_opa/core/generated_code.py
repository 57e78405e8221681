"""The methods `@dataclass` and attrs generate, compiled once and kept beside Python's bytecode.

Both write each class's `__init__`, `__repr__`, `__eq__`... as source text and compile it when the class
is defined: at `talon-opa server`'s start some 200 classes (the engine's, aiohttp's), about 800 compiles,
60 to 90 ms of CPU, a fifth of the imports. Inside `cached()`, they compile through a table keyed by that
exact source text (and file name): the code that runs is what `compile` returns for that text, only not
compiled again. The table is one marshal file in the bytecode cache of this package (`__pycache__`, or
PYTHONPYCACHEPREFIX), named for the Python that wrote it, as a .pyc is. It is written when a start
compiled something new, unless bytecode is not written (PYTHONDONTWRITEBYTECODE); one that cannot be read
is ignored (the compiles happen as before, and a new one is written); where it cannot be written (a
read-only install), start-up compiles as before.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import hashlib
import importlib.util
import marshal
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any

_Key = bytes  # sha256 of the file name and the source text


def key_of(source: str, filename: str) -> _Key:
    """The table's key of one compile."""
    return hashlib.sha256(f"{filename}\0{source}".encode()).digest()


def table_path() -> Path | None:
    """Where the table is kept: this module's bytecode cache folder; None when Python keeps no bytecode."""
    cached = importlib.util.cache_from_source(__file__) if sys.implementation.cache_tag else None
    return Path(cached).with_suffix(".methods") if cached else None


def read(path: Path) -> dict[_Key, CodeType]:
    """The table kept at `path`; empty when there is none, or it was written by another Python or is damaged."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    magic = importlib.util.MAGIC_NUMBER
    if not data.startswith(magic):
        return {}
    try:
        table = marshal.loads(data[len(magic) :])
    except (EOFError, ValueError, TypeError):
        return {}
    if not isinstance(table, dict) or not all(isinstance(c, CodeType) for c in table.values()):
        return {}
    return table


def write(path: Path, table: dict[_Key, CodeType]) -> None:
    """The table, replacing the file at once (a start reading it meanwhile sees the old or the new one)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(importlib.util.MAGIC_NUMBER + marshal.dumps(table))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


class _Compiler:
    """`compile` through the table: what is missing is compiled as the library would, then kept."""

    def __init__(self, table: dict[_Key, CodeType]) -> None:
        self.table = table
        self.used: dict[_Key, CodeType] = {}  # what is written back: the table of this start, no stale entry
        self.added = 0

    def code(self, source: str, filename: str) -> CodeType:
        # as `exec(source)` and `compile(source, filename, "exec")` in the libraries, which use no
        # `from __future__` flags that a compile would inherit
        key = key_of(source, filename)
        code = self.table.get(key)
        if code is None:
            code = builtins.compile(source, filename, "exec", dont_inherit=True)
            self.added += 1
        self.used[key] = code
        return code

    def exec_(self, source: Any, globals: Any = None, locals: Any = None) -> None:
        """`exec` as dataclasses calls it: the source text of one function, its globals and a namespace."""
        if isinstance(source, str):
            source = self.code(source, "<string>")
        builtins.exec(source, globals, locals)

    def compile_(self, source: Any, filename: Any, mode: str, *args: Any, **kwargs: Any) -> Any:
        """`compile` as attrs calls it: `compile(script, filename, "exec")`."""
        plain = isinstance(source, str) and isinstance(filename, str) and mode == "exec" and not args and not kwargs
        if plain and _VARIES not in source:
            return self.code(source, filename)
        return builtins.compile(source, filename, mode, *args, **kwargs)


# attrs writes a number that changes with each process (a hash of the class name) into `__hash__`'s source:
# never found again, not kept
_VARIES = "def __hash__"


def _attrs_make() -> ModuleType | None:
    module = sys.modules.get("attr._make")
    if module is not None:
        return module
    try:
        import attr._make as make
    except ImportError:
        return None
    return make


@contextlib.contextmanager
def cached(path: Path | None = None) -> Iterator[None]:
    """While inside, dataclasses and attrs compile the methods they generate through the kept table.

    Only for single-threaded imports: the names `exec` and `compile` are set in those two modules meanwhile
    (a module's own name is found before the builtin).
    """
    path = path if path is not None else table_path()
    compiler = _Compiler(read(path) if path is not None else {})
    make = _attrs_make()
    setattr(dataclasses, "exec", compiler.exec_)  # noqa: B010
    if make is not None:
        setattr(make, "compile", compiler.compile_)  # noqa: B010
    try:
        yield
    finally:
        delattr(dataclasses, "exec")
        if make is not None:
            delattr(make, "compile")
        if compiler.added and path is not None and not sys.dont_write_bytecode:
            write(path, compiler.used)
