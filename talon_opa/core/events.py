"""The alert: decoded from an HTTP body like Falco Talon does, and normalised into the OPA input.

Decoding follows Talon's Go `encoding/json` behaviour (reference/talon-semantics.md §1.2): keys
case-insensitive with the last occurrence winning, `time` RFC 3339 or null/absent, `source`
defaulting to `syscall`, unknown keys ignored, JSON `null` as body = an empty alert, trailing bytes
after the first JSON value ignored. Numbers keep their exact value (integers beyond 2^63 included).
`Alert.opa_input()` is THE normalised input the Rego rules see (schema documented in docs/rego.md).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from talon_opa.core import priorities
from talon_opa.core.errors import AlertError
from talon_opa.core.slots import slot_init

JSON_HINT = "send the alert as JSON: set Falco's json_output: true (or use Falcosidekick's webhook output)"

# Falco's text prefix: "HH:MM:SS.nnnnnnnnn: Priority " or, with time_format_iso_8601,
# "2026-07-14T08:21:19.502117450+0000: Priority ". Longest names first and a word boundary, so
# "Informational" is removed whole (Talon's regex leaves "rmational"; DESIGN §4).
_PREFIX = re.compile(
    r"^(?:\d{2}:\d{2}:\d{2}\.\d+|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)"
    r": (?:Informational|Emergency|Critical|Warning|Notice|Alert|Error|Debug|Info)(?= |$)",
    re.IGNORECASE,
)

# \Z, not `$`: `$` accepts a final newline, which Go's RFC 3339 parser refuses. Month, hour, minute,
# second and offset ranges are in the pattern; only a day after the 28th needs the calendar.
_RFC3339 = re.compile(
    r"^(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:[.,]\d+)?"
    r"(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)\Z",
    re.ASCII,
)

_MAX_INT_DIGITS = 4000  # below Python's int/str conversion limit; Falco never sends longer
_MAX_EXPONENT = 400  # a float written with a larger exponent keeps its text as its string form
MAX_DEPTH = 32  # deepest nesting of arrays/objects inside output_fields, tags or context (Falco's are flat)


class JsonFloat(float):
    """A JSON number with a fraction or exponent: behaves as a float, remembers its decimal text."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> JsonFloat:
        self = super().__new__(cls, text)
        self.text = text
        return self


class _Object(dict[str, Any]):
    """A JSON object that had a repeated key: last occurrence wins, and its pairs are kept in order."""

    __slots__ = ("pairs",)
    pairs: list[tuple[str, Any]]


def _object_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj  # no repeated key: the dict's order is the order of occurrence
    dup = _Object(pairs)
    dup.pairs = pairs
    return dup


def _parse_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise ValueError(f"integer with {len(text)} digits is too long")
    return int(text)


def _parse_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON value {name}")  # Go rejects NaN and Infinity


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_hook,
    parse_int=_parse_int,
    parse_float=JsonFloat,
    parse_constant=_parse_constant,
)
# for a body with at most MAX_DEPTH brackets: objects as tuples of their pairs, made without calling Python
# (`_tree` makes them what `_DECODER` makes); a body no longer than the longest integer needs no length check
_PAIRS_DECODER = json.JSONDecoder(object_pairs_hook=tuple, parse_float=JsonFloat, parse_constant=_parse_constant)
_LONG_PAIRS_DECODER = json.JSONDecoder(
    object_pairs_hook=tuple, parse_int=_parse_int, parse_float=JsonFloat, parse_constant=_parse_constant
)
_WS = " \t\n\r"
_JSON_TYPES = frozenset({"application/json", "application/json; charset=utf-8"})  # what Falco and Falcosidekick send


def number_text(value: int | float) -> str:
    """A number's decimal text: exact digits, no exponent (`1234567`, `1.5`, `0.00001`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = value.text if isinstance(value, JsonFloat) else repr(value)
    try:
        dec = Decimal(text)
    except InvalidOperation:
        return text
    if not dec.is_finite() or abs(dec.adjusted()) > _MAX_EXPONENT:
        return text
    if dec.is_zero():
        return "0"
    return format(dec.normalize(), "f")


def value_text(value: Any) -> str:
    """The string form of an output field value, as the match conditions compare it.

    Strings as they are; numbers by their decimal text (our fix: Talon renders float64 `%v`, so
    `1234567` became `1.234567e+06`); `true`/`false`; null `<nil>`; otherwise Go's `%v`:
    objects `map[k1:v1 k2:v2]` (keys sorted), arrays `[v1 v2]`.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return "<nil>"
    if isinstance(value, bool | int | float):
        return number_text(value)
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{value_text(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(value_text(v) for v in value) + "]"
    return str(value)


def _json_safe(value: Any) -> Any:
    """Output field values for the OPA input: a number JSON cannot carry (1e400) becomes its text."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return number_text(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def strip_prefix(output: str) -> str:
    """Falco's output without its `time: Priority ` prefix (then one leading space, like Talon)."""
    m = _PREFIX.match(output)
    stripped = output[m.end() :] if m is not None else output
    return stripped[1:] if stripped.startswith(" ") else stripped


def _check_time(text: str) -> None:
    m = _RFC3339.match(text)
    if m is None:
        raise ValueError("not RFC 3339")
    day = m.group(3)
    if day > "28":
        # year 0 is valid in Go; 2000 has the same leap-year rule for the day check
        _dt.date(int(m.group(1)) or 2000, int(m.group(2)), int(day))


@slot_init
@dataclass(frozen=True, slots=True)
class Alert:
    """One Falco alert, decoded. `output` is prefix-stripped; `raw_output` as received."""

    output: str = ""
    priority: str = ""
    rule: str = ""
    hostname: str = ""
    time: str | None = None  # RFC 3339 text as received; None when absent or null
    source: str = "syscall"
    output_fields: dict[str, Any] = field(default_factory=dict)
    tags: list[Any] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    raw_output: str = ""

    @property
    def priority_rank(self) -> int:
        return priorities.rank(self.priority)

    def field_str(self, name: str) -> str | None:
        """An output field as Talon's accessors read it: strings and numbers only, else None."""
        value = self.output_fields.get(name)
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return number_text(value)
        return None

    def _first(self, *names: str) -> str | None:
        for name in names:
            value = self.field_str(name)
            if value:
                return value
        return None

    def pod_name(self) -> str | None:
        value = self.output_fields.get("k8s.pod.name")  # a syscall alert's, a string: no other to look at
        if value and type(value) is str:
            return value
        return self._first("k8s.pod.name", "ka.target.pod.name", "ka.target.name")

    def namespace(self) -> str | None:
        value = self.output_fields.get("k8s.ns.name")
        if value and type(value) is str:
            return value
        return self._first("k8s.ns.name", "ka.target.namespace")

    def remote_ip(self) -> str | None:
        return self._first("fd.rip", "fd.sip")

    def remote_port(self) -> str | None:
        return self._first("fd.rport", "fd.sport")

    def remote_protocol(self) -> str | None:
        return self._first("fd.rproto", "fd.sproto")

    def target_name(self) -> str | None:
        return self._first("ka.target.name")

    def target_namespace(self) -> str | None:
        return self._first("ka.target.namespace")

    def target_resource(self) -> str | None:
        return self._first("ka.target.resource")

    def opa_input(self, *, lean: bool = False) -> dict[str, Any]:
        """THE normalised OPA input (docs/rego.md): the alert plus precomputed, indexable helpers.

        `lean`: only what talon-opa's own Rego reads (`LEAN_FIELDS`), for a bundle without the user's Rego.
        """
        fields = self.output_fields
        tags = self.tags
        if lean:
            if all(type(v) is str for v in fields.values()):
                return {
                    "rule": self.rule,
                    "priority_rank": self.priority_rank,
                    "source": self.source,
                    "tags_set": {t: True for t in tags if isinstance(t, str)},
                    "output_fields_str": dict(fields),
                }
            return {  # output_fields only here: where it differs from output_fields_str (lib/caps reads arrays)
                "rule": self.rule,
                "priority_rank": self.priority_rank,
                "source": self.source,
                "tags_set": {t: True for t in tags if isinstance(t, str)},
                "output_fields": _json_safe(fields),
                "output_fields_str": {k: value_text(v) for k, v in fields.items()},
            }
        if all(type(v) is str for v in fields.values()):  # the usual case: already safe, its own string form
            safe_fields, fields_str = dict(fields), dict(fields)
        else:
            safe_fields = _json_safe(fields)
            fields_str = {k: value_text(v) for k, v in fields.items()}
        return {
            "rule": self.rule,
            "priority": self.priority,
            "priority_rank": self.priority_rank,
            "source": self.source,
            "hostname": self.hostname,
            "time": self.time,
            "output": self.output,
            "tags": list(tags) if all(type(t) is str for t in tags) else _json_safe(tags),
            "tags_set": {t: True for t in tags if isinstance(t, str)},
            "output_fields": safe_fields,
            "output_fields_str": fields_str,
        }


# the input fields talon-opa's library and translated rules read (besides the engine's `counters`)
LEAN_FIELDS = ("rule", "priority_rank", "source", "tags_set", "output_fields_str")

_STRING_FIELDS = frozenset(("output", "priority", "rule", "hostname", "source", "trace_id"))
_FIELDS = _STRING_FIELDS | {"time", "output_fields", "context", "tags"}  # case-folded


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in `value` (a scalar: 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children: Any = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        d += 1
        if d > deepest:
            deepest = d
            if d > MAX_DEPTH:
                return d
        stack.extend((c, d) for c in children)
    return deepest


def _check_depth(name: str, value: Any) -> None:
    """Refuse values nested beyond MAX_DEPTH: every later step (Rego input, string forms) walks them."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, v in items:
        if _depth(v) > MAX_DEPTH:
            where = f"{name}[{key!r}]" if isinstance(value, dict) else f"{name}[{key}]"
            raise AlertError(
                f"{where} nests arrays or objects more than {MAX_DEPTH} levels deep",
                field=name,
                hint="Falco's output fields and tags are flat: send flat values",
            )


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _wrong_type(name: str, value: Any, want: str) -> AlertError:
    return AlertError(f"{name!r} must be {want}, not {_type_name(value)}", field=name)


def decode_alert(body: bytes, content_type: str | None = None) -> Alert:
    """Decode an HTTP body into an Alert, or raise AlertError (status 400, or 415 for text/plain)."""
    if (
        content_type is not None
        and content_type not in _JSON_TYPES
        and content_type.split(";", 1)[0].strip().lower() == "text/plain"
    ):
        raise AlertError("the alert is text/plain, not JSON", status=415, hint=JSON_HINT)
    text = body.decode("utf-8", errors="replace").lstrip(_WS)
    if not text:
        raise AlertError("empty body: expected a JSON object", hint=JSON_HINT)
    # fewer brackets in the whole body than the limit: nothing can nest beyond it (the usual, flat alert);
    # counted in the bytes (the text's own: UTF-8 puts no bracket byte in another character, nor does U+FFFD)
    brackets = body.count(b"{") + body.count(b"[")
    shallow = brackets <= MAX_DEPTH
    decoder = _DECODER
    if shallow:
        decoder = _PAIRS_DECODER if len(text) <= _MAX_INT_DIGITS else _LONG_PAIRS_DECODER
    try:
        doc, _ = decoder.raw_decode(text)  # one value; trailing bytes ignored, like Go's Decoder
    except (ValueError, RecursionError) as e:
        raise AlertError(f"malformed JSON: {e}", hint=JSON_HINT) from e
    if doc is None:
        return Alert()
    if type(doc) is tuple:
        pairs: Iterable[tuple[str, Any]] = doc
    elif isinstance(doc, dict):
        pairs = doc.pairs if isinstance(doc, _Object) else doc.items()
    else:
        raise AlertError(f"the alert must be a JSON object, not {_type_name(doc)}")

    strings: dict[str, str] = {}
    time: str | None = None
    # each occurrence of output_fields and context since the last null (Go reuses the map: a repeated key adds to it)
    output_fields: list[Any] | None = None
    context: list[Any] | None = None
    tags: list[Any] | None = None
    containers = 1  # the alert and its arrays and objects read here: as many as `brackets` when none nests
    for key, value in pairs:
        if key in _FIELDS:  # Falco's own spelling
            name = key
        else:
            name = key.casefold()
            if name not in _FIELDS:
                continue  # unknown keys (Falco's uuid, Falcosidekick's extras) are ignored
        if name in _STRING_FIELDS:
            if value is None:
                continue  # Go leaves a string unchanged on null
            if not isinstance(value, str):
                raise _wrong_type(name, value, "a string")
            strings[name] = value
        elif name == "time":
            if value is None:
                continue
            if not isinstance(value, str):
                raise _wrong_type(name, value, "an RFC 3339 string")
            try:
                _check_time(value)
            except ValueError as e:
                raise AlertError(
                    f"'time' is not an RFC 3339 time: {value!r}",
                    field="time",
                    hint="send e.g. 2026-07-14T08:21:07.114583261Z",
                ) from e
            time = value
        elif name == "tags":
            if value is None:
                tags = None
            elif not isinstance(value, list):
                raise _wrong_type(name, value, "an array")
            else:
                if not shallow:
                    _check_depth(name, value)
                tags = value
                containers += 1
        else:  # output_fields, context
            if value is None:
                merged = None
            elif not isinstance(value, tuple | dict):
                raise _wrong_type(name, value, "an object")
            else:
                if not shallow:
                    _check_depth(name, value)
                earlier = output_fields if name == "output_fields" else context
                merged = [value] if earlier is None else [*earlier, value]
                containers += 1
            if name == "output_fields":
                output_fields = merged
            else:
                context = merged

    # decoded as pairs with something nested (or a bracket in a string): objects as `_DECODER` makes them
    tree = shallow and brackets != containers
    raw_output = strings.get("output", "")
    return Alert(
        strip_prefix(raw_output),
        strings.get("priority", ""),
        strings.get("rule", ""),
        strings.get("hostname", ""),
        time,
        strings.get("source", "") or "syscall",
        _merged(output_fields, tree),
        (_tree(tags) if tree else tags) or [],
        _merged(context, tree),
        raw_output,
    )


def _tree(value: Any) -> Any:
    """A value decoded with its objects as pairs (nested at most MAX_DEPTH deep), as `_DECODER` decodes it."""
    if type(value) is tuple:
        return _object_hook([(k, _tree(v)) for k, v in value])
    if type(value) is list:
        return [_tree(v) for v in value]
    return value


def _merged(occurrences: list[Any] | None, tree: bool) -> dict[str, Any]:
    """One object of the occurrences of output_fields or context (pairs, or dicts from `_DECODER`)."""
    if occurrences is None:
        return {}
    if len(occurrences) == 1 and not tree:  # the usual alert
        return dict(occurrences[0])
    merged: dict[str, Any] = {}
    for value in occurrences:
        merged.update(((k, _tree(v)) for k, v in value) if tree else value)
    return merged
