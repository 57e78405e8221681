"""YAML whose every value remembers where it was written (file:line:column).

PyYAML composes the nodes (libyaml when present: same nodes and marks); `Decoder` turns them into
`Value`s, resolving plain scalars as yaml.v3 does (the YAML 1.2 core schema Talon sees: `yes`/`on` are
strings), with merge keys (`<<`) and explicit tags (`!!str 3`). What the values mean is up to the
reader (translator.load reads Talon's rules files from them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from talon_opa.core.errors import RuleProblem, RulesError, Where
from talon_opa.core.slots import slot_init

Kind = Literal["null", "bool", "int", "float", "str", "seq", "map"]

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
# The tag our composer gives a plain scalar written without a tag (compared by identity, never by text):
# its kind is then decided by `_resolve_plain` (yaml.v3's rules), so PyYAML's own guess is not needed.
_PLAIN = "\0plain"


class _Composer(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe composer (libyaml when present: same nodes and marks) without its tag guessing.

    The composer asks `resolve` for the tag of every untagged node. PyYAML's answer (a regex search per
    scalar) only mattered to compare it with the same answer, so a plain scalar gets `_PLAIN`, except `<<`
    which must stay a merge key. Explicit tags (`!!str 3`) are not resolved and reach the decoder as written.
    """

    def resolve(self, kind: type[yaml.Node], value: str | None, implicit: Any) -> str:
        if kind is yaml.ScalarNode:
            return _scalar_tag(value, implicit)
        return _SEQ if kind is yaml.SequenceNode else _MAP

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        return None  # no path resolvers: PyYAML's own check is a call per node

    def ascend_resolver(self) -> None:
        return None


_LOADER: Any = _Composer


def _scalar_tag(value: str | None, implicit: Any) -> str:
    """The tag of an untagged scalar: `_STR` when quoted (PyYAML's answer too), else `_PLAIN` (or `_MERGE`)."""
    if not implicit[0]:
        return _STR
    return _MERGE if value == "<<" else _PLAIN


# yaml.v3's implicit resolution (YAML 1.2 core schema), which is what Talon sees: `yes`/`on` are strings.
_NULLS = {"", "~", "null", "Null", "NULL"}
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"[-+]?(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9][0-9_]*)")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF = {".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"}
_NINF = {"-.inf", "-.Inf", "-.INF"}
_NAN = {".nan", ".NaN", ".NAN"}
_NUMERIC_START = frozenset("+-.0123456789")


@slot_init  # one per YAML value of a rules file
@dataclass(frozen=True, slots=True, eq=False)
class Value:
    """A YAML value and its place. `data`: a JSON scalar, a tuple of Values (seq) or a dict of Values (map)."""

    kind: Kind
    data: Any
    where: Where
    text: str = ""  # a scalar's text as written (after unquoting)
    quoted: bool = False
    key_where: Where | None = None  # where its key was written, when it is a mapping's value

    def plain(self) -> Any:
        """The JSON value (lists and dicts of scalars)."""
        if self.kind == "seq":
            return [v.plain() for v in self.data]
        if self.kind == "map":
            return {k: v.plain() for k, v in self.data.items()}
        return self.data


@dataclass(slots=True)
class Text:
    """A string field: the scalar's text (Talon's Go string) and where it was written."""

    value: str
    where: Where


def compose(text: str, file: str) -> list[yaml.Node]:
    """The non-empty YAML documents of `text`; RulesError (the problem and its place) if it is not YAML."""
    with _syntax_errors(file):
        docs = list(yaml.compose_all(text, Loader=_LOADER))
    return [d for d in docs if d is not None]


@contextmanager
def _syntax_errors(file: str) -> Iterator[None]:
    """PyYAML's errors as a RulesError: the problem and its place."""
    try:
        yield
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = Where(file, mark.line + 1, mark.column + 1) if mark else Where(file, 1, 1)
        what = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise RulesError(
            [RuleProblem(where, f"wrong YAML syntax: {what}", hint="fix the YAML syntax at this line and column")]
        ) from e
    except yaml.YAMLError as e:
        raise RulesError([RuleProblem(Where(file, 1, 1), f"wrong YAML syntax: {e}", hint="fix the YAML syntax")]) from e


class Items:
    """The items of a file whose first YAML document is a sequence, decoded one at a time from the parser's
    events, without YAML nodes: at 10,000 rules the whole file's nodes were most of the loader's memory.

    `Items.open` is None when the first document is not a sequence (compose the file whole). `values` decodes
    the items; `next_document()` then reads the other documents (syntax errors in them are errors, as for
    `compose`) and tells where the first of them starts. Syntax errors raise RulesError, like `compose`'s. Only
    for text without aliases and anchors (`streamable`): an alias refers to an earlier item, not kept.
    """

    def __init__(self, loader: _Composer, file: str) -> None:
        self._loader = loader
        self._file = file

    @staticmethod
    def streamable(text: str) -> bool:
        return "*" not in text and "&" not in text

    @classmethod
    def open(cls, text: str, file: str) -> Items | None:
        loader = _Composer(text)
        with _syntax_errors(file):
            loader.get_event()  # the stream's start
            if loader.check_event(yaml.StreamEndEvent):
                return None
            loader.get_event()  # the document's start
            if not loader.check_event(yaml.SequenceStartEvent):
                return None
            loader.get_event()
        return cls(loader, file)

    def values(self, decoder: Decoder) -> Iterator[Value | None]:
        """Each item's Value (None when it could not be decoded), composed and decoded from the parser's events
        at once (`Decoder.streamed`)."""
        loader = self._loader
        with _syntax_errors(self._file):
            while not loader.check_event(yaml.SequenceEndEvent):
                yield decoder.streamed(loader, 1)
            loader.get_event()  # the sequence's end
            loader.get_event()  # the document's end

    def next_document(self) -> Where | None:
        loader = self._loader
        first = None
        with _syntax_errors(self._file):
            while not loader.check_event(yaml.StreamEndEvent):
                loader.get_event()  # the document's start
                if first is None:
                    mark = loader.peek_event().start_mark
                    first = Where(self._file, mark.line + 1, mark.column + 1)
                _skip(loader)
                loader.get_event()  # the document's end
        return first


def node_where(file: str, node: yaml.Node) -> Where:
    """Where a composed node starts."""
    return Where(file, node.start_mark.line + 1, node.start_mark.column + 1)


def kind_name(kind: Kind) -> str:
    """A kind as the user reads it in a problem ("list", "mapping", "string"...)."""
    return {"seq": "list", "map": "mapping", "str": "string", "null": "null"}.get(kind, kind)


def _resolve_plain(text: str) -> tuple[Kind, Any]:
    if text in _NULLS:
        return "null", None
    if text in _BOOLS:
        return "bool", _BOOLS[text]
    if text[0] not in _NUMERIC_START:  # no number, inf or nan starts otherwise
        return "str", text
    if _INT.fullmatch(text):
        digits = text.replace("_", "")
        try:
            if re.fullmatch(r"[-+]?0[0-7]+", digits):  # Go's base-0 parsing: a leading 0 is octal
                return "int", int(digits, 8)
            return "int", int(digits, 0)
        except ValueError:
            pass
    if _FLOAT.fullmatch(text):
        return "float", float(text)
    if text in _INF:
        return "float", math.inf
    if text in _NINF:
        return "float", -math.inf
    if text in _NAN:
        return "float", math.nan
    return "str", text


# a problem found while decoding: where, what happened, what to do
Report = Callable[[Where, str, str], None]


class Decoder:
    """Turns the composed nodes of one file into Values; problems go to `report`."""

    def __init__(self, file: str, report: Report) -> None:
        self.file = file
        self._report = report
        self._resolver = yaml.SafeLoader("")
        self._implicit: dict[str, str] = {}  # text -> the tag PyYAML gives it implicitly

    def value(self, node: yaml.Node, depth: int = 0, key_where: Where | None = None) -> Value | None:
        """The Value of `node`; `key_where`: where its key was written, when it is a mapping's value."""
        mark = node.start_mark
        where = Where(self.file, mark.line + 1, mark.column + 1)
        if depth > 100:
            self._report(where, "the YAML nesting is too deep (a recursive alias?)", "remove the recursive alias")
            return None
        if isinstance(node, yaml.ScalarNode):
            if node.tag is _PLAIN and not node.style:  # the common case, inline: untagged and unquoted
                kind, data = _resolve_plain(node.value)
                return Value(kind, data, where, node.value, False, key_where)
            return self._scalar(node.tag, node.value, node.style, where, key_where)
        if isinstance(node, yaml.SequenceNode):
            items = [self.value(n, depth + 1) for n in node.value]  # all of them: each reports its problems
            if None in items:
                return None
            return Value("seq", tuple(items), where, key_where=key_where)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, where, depth, key_where)
        return None

    def streamed(self, loader: Any, depth: int, key_where: Where | None = None) -> Value | None:
        """`value` of the node whose events `loader` (a `_Composer`) gives next, without building the node:
        the same Value and problems as composing it and then `value`, events left unread once the outcome is
        known are skipped. Only for text without aliases (`Items.streamable`)."""
        event = loader.get_event()
        cls = type(event)
        mark = event.start_mark
        where = Where(self.file, mark.line + 1, mark.column + 1)
        if depth > 100:
            if cls is not yaml.ScalarEvent:
                _finish(loader)
            self._report(where, "the YAML nesting is too deep (a recursive alias?)", "remove the recursive alias")
            return None
        if cls is yaml.ScalarEvent:
            text = event.value
            tag = _event_tag(event)
            if tag is _PLAIN:  # the common case, inline: untagged and unquoted
                kind, data = _resolve_plain(text)
                return Value(kind, data, where, text, False, key_where)
            return self._scalar(tag, text, event.style, where, key_where)
        if cls is yaml.SequenceStartEvent:
            items = []
            while not loader.check_event(yaml.SequenceEndEvent):
                items.append(self.streamed(loader, depth + 1))  # all of them: each reports its problems
            loader.get_event()
            if None in items:
                return None
            return Value("seq", tuple(items), where, key_where=key_where)
        return self._streamed_mapping(loader, where, depth, key_where)

    def _streamed_mapping(self, loader: Any, where: Where, depth: int, key_where: Where | None) -> Value | None:
        """`_mapping` over events (see `streamed`)."""
        data: dict[str, Value] = {}
        seen: dict[str, Where] = {}
        merged: dict[str, Value] = {}
        file = self.file
        while not loader.check_event(yaml.MappingEndEvent):
            kevent = loader.peek_event()
            kmark = kevent.start_mark
            kwhere = Where(file, kmark.line + 1, kmark.column + 1)
            scalar = type(kevent) is yaml.ScalarEvent
            if _event_tag(kevent) == _MERGE:
                _skip(loader)  # the key
                self._merge(self.streamed(loader, depth + 1), merged)
                continue
            if not scalar:
                _finish(loader)
                self._report(kwhere, "a mapping key must be a plain string", "write the key as a string")
                return None
            key = loader.get_event().value
            if key in seen:
                _finish(loader)
                self._twice(key, kwhere, seen[key])
                return None
            seen[key] = kwhere
            v = self.streamed(loader, depth + 1, kwhere)
            if v is None:
                _finish(loader)
                return None
            data[key] = v
        loader.get_event()
        return _map(data, merged, where, key_where)

    def consume(self, node: yaml.Node, text: str) -> Value | None:
        """`value(node)` for a document's root, which releases each item's nodes once it is decoded.

        At 10,000 rules the nodes and the Values together were the loader's peak of memory (250 -> 209 MB).
        Only when the text has no `*`, so no alias: an alias to the root itself would meet released items.
        """
        if not isinstance(node, yaml.SequenceNode) or "*" in text:
            return self.value(node)
        nodes: list[Any] = node.value
        items = []
        for i, item in enumerate(nodes):
            nodes[i] = None
            items.append(self.value(item, 1))
            del item
        if None in items:
            return None
        mark = node.start_mark
        return Value("seq", tuple(items), Where(self.file, mark.line + 1, mark.column + 1))

    def _scalar(self, tag: str, text: str, style: str | None, where: Where, key_where: Where | None) -> Value:
        if style not in (None, ""):
            return Value("str", text, where, text, True, key_where)
        if tag is _PLAIN:  # untagged: yaml.v3's implicit resolution
            kind, data = _resolve_plain(text)
            return Value(kind, data, where, text, False, key_where)
        implicit = self._implicit.get(text)  # what PyYAML would have guessed for it untagged
        if implicit is None:
            implicit = self._resolver.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
            self._implicit[text] = implicit
        if tag == _STR and implicit != _STR:  # an explicit !!str
            return Value("str", text, where, text, True, key_where)
        if tag == implicit:
            kind, data = _resolve_plain(text)
            return Value(kind, data, where, text, False, key_where)
        # an explicit tag such as !!int or !!float
        short = tag.rsplit(":", 1)[-1]
        try:
            if short == "int":
                return Value("int", int(text.replace("_", ""), 0), where, text, False, key_where)
            if short == "float":
                return Value("float", float(text), where, text, False, key_where)
            if short == "bool" and text.lower() in ("true", "false"):
                return Value("bool", text.lower() == "true", where, text, False, key_where)
            if short == "null":
                return Value("null", None, where, text, False, key_where)
        except ValueError:
            pass
        return Value("str", text, where, text, False, key_where)

    def _mapping(self, node: yaml.MappingNode, where: Where, depth: int, key_where: Where | None) -> Value | None:
        data: dict[str, Value] = {}
        seen: dict[str, Where] = {}
        merged: dict[str, Value] = {}
        file = self.file
        for knode, vnode in node.value:
            kmark = knode.start_mark
            kwhere = Where(file, kmark.line + 1, kmark.column + 1)
            if knode.tag == _MERGE:
                self._merge(self.value(vnode, depth + 1), merged)
                continue
            if not isinstance(knode, yaml.ScalarNode):
                self._report(kwhere, "a mapping key must be a plain string", "write the key as a string")
                return None
            key = knode.value
            if key in seen:
                self._twice(key, kwhere, seen[key])
                return None
            seen[key] = kwhere
            v = self.value(vnode, depth + 1, kwhere)
            if v is None:
                return None
            data[key] = v
        return _map(data, merged, where, key_where)

    def _merge(self, src: Value | None, merged: dict[str, Value]) -> None:
        """A merge key's value (a mapping, or a list of them) into `merged`; a key already there stays."""
        sources = [] if src is None else (list(src.data) if src.kind == "seq" else [src])
        for s in sources:
            if s.kind != "map":
                self._report(s.where, "a merge key '<<' must refer to a mapping", "use '<<: *anchor'")
                continue
            for k, v in s.data.items():
                merged.setdefault(k, v)

    def _twice(self, key: str, where: Where, first: Where) -> None:
        self._report(where, f"mapping key {key!r} already defined at line {first.line}", f"write {key!r} only once")


def _map(data: dict[str, Value], merged: dict[str, Value], where: Where, key_where: Where | None) -> Value:
    """A mapping's Value: its own keys, then those merged in (`<<`) that it does not have."""
    for k, v in merged.items():
        data.setdefault(k, v)
    return Value("map", data, where, key_where=key_where)


def _event_tag(event: Any) -> str:
    """The tag `_Composer` gives the node that starts with `event`."""
    tag: str | None = event.tag
    if tag is not None and tag != "!":
        return tag
    if type(event) is yaml.ScalarEvent:
        return _scalar_tag(event.value, event.implicit)
    return _SEQ if type(event) is yaml.SequenceStartEvent else _MAP


_STARTS = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_ENDS = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


def _skip(loader: Any) -> None:
    """Read the events of the next node and drop them."""
    if isinstance(loader.get_event(), _STARTS):
        _finish(loader)


def _finish(loader: Any) -> None:
    """Read the events up to the end of the collection being read, its end included, and drop them."""
    depth = 0
    while True:
        event = loader.get_event()
        if isinstance(event, _STARTS):
            depth += 1
        elif isinstance(event, _ENDS):
            if depth == 0:
                return
            depth -= 1
