"""Decoding and validation of plugin parameters, the way Talon does it.

A plugin's parameters are a frozen, kw_only dataclass whose fields are declared with `param(...)`:

    @dataclass(frozen=True, kw_only=True, slots=True)
    class LogParams:
        tail_lines: int = param(20, doc="lines to fetch; 0: 20", check=between(0), zero_is_default=True)

`check` validates a decoded value (`between`, `one_of`, `cidr`, `each(cidr)`...); a `problems(self)` method
on the class checks several fields together, once each field is valid.

Actionner and output parameters decode like Talon's `utils.DecodeParams` (mapstructure without weak
typing, then go-playground/validator): keys match case-insensitively (an exact match first), unknown keys
are ignored (`unknown_keys` lists them so the loader can warn), a value of the wrong YAML type is an error
(`"5"` is not an int, `3` is not a string, `true` is not an int), YAML null counts as absent. Notifier
settings (class attribute `decoding = "settings"`) decode like Talon's `utils.SetFields`: scalars are
converted from their text (`"3"` → 3, `3` → `"3"`, `"true"` → True). Every problem is collected into one
`ParamsInvalid`, each naming the field and what to write instead.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from talon_opa.core import secrets

Decoding = Literal["strict", "settings"]
T = TypeVar("T")

_INT64 = (-(2**63), 2**63 - 1)
_JSON_SCALARS = frozenset({str, int, bool, float, type(None)})


@dataclass(frozen=True, slots=True)
class Bad:
    """What a check found wrong; `at` is appended to the field's path (e.g. "[1]" for a list item)."""

    message: str
    hint: str = ""
    at: str = ""


Check = Callable[[Any], Iterable[Bad]]


@dataclass(frozen=True, slots=True)
class ParamProblem:
    """One invalid parameter: `field` is the parameter's path (e.g. "labels" or "allow_cidr[1]")."""

    field: str
    message: str
    hint: str = ""


class ParamsInvalid(Exception):
    """Raised by `Spec.decode` with every problem found in the parameters."""

    def __init__(self, problems: list[ParamProblem]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ParamInfo:
    """What `param()` stores in a field's metadata (read by decode, the docs and `actionners list`)."""

    doc: str
    required: bool = False
    checks: tuple[Check, ...] = ()
    zero_is_default: bool = False  # Talon replaces 0 / "" by the default at run time; we do it at load
    secret: bool = False  # never shown in logs or docs
    key: str = ""  # the name users write, when it differs from the field's (`from` is a Python keyword)


def param(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    required: bool = False,
    check: Check | tuple[Check, ...] = (),
    zero_is_default: bool = False,
    secret: bool = False,
    key: str = "",
) -> Any:
    """Declare a parameter: its default (none when required), a one-line doc and its checks."""
    checks = check if isinstance(check, tuple) else (check,)
    info = ParamInfo(doc, required, checks, zero_is_default, secret, key)
    meta = {"param": info}
    if isinstance(default, dict):
        frozen = dict(default)
        return dataclasses.field(default_factory=lambda: dict(frozen), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def info(f: dataclasses.Field[Any]) -> ParamInfo:
    """The declaration of a field (a bare field without `param()` gets an empty one)."""
    found = f.metadata.get("param")
    return found if isinstance(found, ParamInfo) else ParamInfo(doc="")


def fields(cls: type[Any]) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(cls)


def key_of(f: dataclasses.Field[Any]) -> str:
    """The parameter's name as users write it."""
    return info(f).key or f.name


@dataclass(frozen=True, slots=True)
class _Param:
    """A field of a parameters class with what decoding needs of it, worked out once per class."""

    field: dataclasses.Field[Any]
    info: ParamInfo
    key: str  # key_of(field)
    folded: tuple[str, ...]  # _fold(key)


# Per parameters class, worked out at its first use: a class's fields and annotations never change.
_PARAMS: dict[type[Any], tuple[_Param, ...]] = {}
_HINTS: dict[type[Any], dict[str, Any]] = {}


def _params_of(cls: type[Any]) -> tuple[_Param, ...]:
    """The fields of `cls` with their declarations."""
    found = _PARAMS.get(cls)
    if found is None:
        found = _PARAMS[cls] = tuple(_Param(f, info(f), key_of(f), _fold(key_of(f))) for f in fields(cls))
    return found


def _hints(cls: type[Any]) -> dict[str, Any]:
    """`typing.get_type_hints(cls)` (which evaluates the text of every annotation)."""
    found = _HINTS.get(cls)
    if found is None:
        found = _HINTS[cls] = typing.get_type_hints(cls)
    return found


def default_of(f: dataclasses.Field[Any]) -> Any:
    """The field's default as a Python value; None when it has none (required parameters)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


# --- public API ---------------------------------------------------------------------------------


def decode(cls: type[T], raw: Mapping[str, Any]) -> T:
    """Decode and validate `raw` into an instance of the dataclass `cls`; raises ParamsInvalid."""
    if not isinstance(raw, Mapping):
        message = f"expected a map of parameters, got {_describe(raw)}"
        raise ParamsInvalid([ParamProblem("parameters", message, "write key: value pairs")])
    mode: Decoding = getattr(cls, "decoding", "strict")
    hints = _hints(cls)
    matched = _match_keys(cls, raw)
    values: dict[str, Any] = {}
    problems: list[ParamProblem] = []
    for p in _params_of(cls):
        f, meta, name = p.field, p.info, p.key
        key = matched.get(f.name)
        path = key if key is not None else name
        value = raw[key] if key is not None else None
        if value is None:
            if meta.required:
                problems.append(ParamProblem(name, "is required", f"add `{name}: ...` ({meta.doc})"))
                continue
            values[f.name] = default_of(f)
            continue
        start = len(problems)
        _decode_one(p, hints[f.name], value, path, mode, values, problems)
        if meta.secret:
            problems[start:] = [_hidden(problem, value) for problem in problems[start:]]
    if problems:
        raise ParamsInvalid(problems)
    instance = cls(**values)
    cross = getattr(instance, "problems", None)
    if callable(cross):
        found_cross: list[ParamProblem] = list(cross())
        if found_cross:
            raise ParamsInvalid(found_cross)
    return instance


def _decode_one(
    p: _Param, tp: Any, value: Any, path: str, mode: Decoding, values: dict[str, Any], problems: list[ParamProblem]
) -> None:
    """Decode and check one present value into `values`, or add its problems."""
    f, meta, name = p.field, p.info, p.key
    decoded, found = _decode_value(tp, value, path, mode)
    if found:
        problems.extend(found)
        return
    if meta.zero_is_default and decoded in (0, "") and not isinstance(decoded, bool):
        decoded = default_of(f)
    if meta.required and decoded in ("", None):
        problems.append(ParamProblem(path, "must not be empty", f"give `{name}` a value ({meta.doc})"))
        return
    if decoded is not None:
        for check in meta.checks:
            problems.extend(ParamProblem(path + bad.at, bad.message, bad.hint) for bad in check(decoded))
    values[f.name] = decoded


def _hidden(problem: ParamProblem, value: Any) -> ParamProblem:
    """The problem of a secret parameter without its value (whole, shortened or as text)."""
    texts = {form for leaf in _leaves(value) for form in (leaf, _short(leaf))}
    message, hint = problem.message, problem.hint
    for text in sorted(texts, key=len, reverse=True):
        if text:
            message, hint = message.replace(text, secrets.REDACTED), hint.replace(text, secrets.REDACTED)
    return ParamProblem(problem.field, message, hint)


def _leaves(value: Any) -> list[str]:
    """The text of every scalar inside a value (a string, a number, or those inside lists and maps)."""
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _leaves(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _leaves(v)]
    text = _scalar_text(value)
    return [text] if text is not None else []


def secret_values(instance: Any) -> list[str]:
    """The values of the parameters declared secret in a decoded instance (to scrub them from every output)."""
    return [t for p in _params_of(type(instance)) if p.info.secret for t in _leaves(getattr(instance, p.field.name))]


def secret_keys(cls: type[Any], raw: Mapping[Any, Any]) -> set[str]:
    """The keys of `raw` that set a parameter declared secret (to mask them when rules are printed)."""
    if not isinstance(raw, Mapping):
        return set()
    secret = {p.field.name for p in _params_of(cls) if p.info.secret}
    return {key for name, key in _match_keys(cls, raw).items() if name in secret}


def defaults(cls: type[Any]) -> dict[str, Any]:
    """Every parameter with its effective default, as JSON values (null when it has none)."""
    return {p.key: _to_json(default_of(p.field)) for p in _params_of(cls)}


def unknown_keys(cls: type[Any], raw: Mapping[Any, Any]) -> list[str]:
    """Keys of `raw` that match no parameter (Talon ignores them silently; we warn)."""
    if not isinstance(raw, Mapping):
        return []
    used = set(_match_keys(cls, raw).values())
    return [str(k) for k in raw if not (isinstance(k, str) and k in used)]


def type_name(cls: type[Any], f: dataclasses.Field[Any]) -> str:
    """A short, user-facing name of a parameter's type ("string", "integer", "list of strings"...)."""
    return _type_label(_hints(cls)[f.name])


@dataclass(frozen=True, kw_only=True, slots=True)
class NoParams:
    """Parameters of a plugin that takes none."""


# --- checks -------------------------------------------------------------------------------------


def non_empty(message: str, hint: str) -> Check:
    def check(value: Any) -> Iterable[Bad]:
        if len(value) == 0:
            yield Bad(message, hint)

    return check


def one_of(*allowed: str) -> Check:
    def check(value: Any) -> Iterable[Bad]:
        if value not in allowed:
            yield Bad(f"{value!r} is not one of {', '.join(allowed)}", f"write one of: {', '.join(allowed)}")

    return check


def between(low: int | None = None, high: int | None = None) -> Check:
    def check(value: Any) -> Iterable[Bad]:
        if (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                yield Bad(f"{value} is less than {low}", f"write a number >= {low}")
            elif low is None:
                yield Bad(f"{value} is more than {high}", f"write a number <= {high}")
            else:
                yield Bad(f"{value} is not between {low} and {high}", f"write a number from {low} to {high}")

    return check


def each(check: Check) -> Check:
    """Apply `check` to every item of a list (path `[i]`) or every value of a map (path `[key]`)."""

    def run(value: Any) -> Iterable[Bad]:
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for key, item in items:
            for bad in check(item):
                yield Bad(bad.message, bad.hint, f"[{key}]{bad.at}")

    return run


def cidr(value: Any) -> Iterable[Bad]:
    """A CIDR as Go's net.ParseCIDR accepts it: an address and a prefix length (host bits may be set)."""
    ok = isinstance(value, str) and "/" in value
    if ok:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            ok = False
    if not ok:
        yield Bad(f"wrong CIDR {value!r}", 'write an address and a prefix length, e.g. "10.0.0.0/8" or "fd00::/8"')


_ABS_OR_PERCENT = re.compile(r"[+-]?[0-9]+%?")


def absolute_or_percent(value: Any) -> Iterable[Bad]:
    """Talon's `is_absolut_or_percent`: "N" (N >= 0) or "N%" (0..100); "" means unset."""
    if value == "":
        return
    hint = 'write a quoted number of pods ("2") or a percentage from 0 to 100 ("50%")'
    if not _ABS_OR_PERCENT.fullmatch(value):
        yield Bad(f"{value!r} is neither a number nor a percentage", hint)
        return
    number = int(value.rstrip("%"))
    if value.endswith("%") and not 0 <= number <= 100:
        yield Bad(f"{value!r} is not a percentage from 0 to 100", hint)
    elif number < 0:
        yield Bad(f"{value!r} is negative", hint)


_HTTP_URL = re.compile(r"https?://[^\s/?#]+[^\s]*", re.IGNORECASE)


def http_url(value: Any) -> Iterable[Bad]:
    if not _HTTP_URL.fullmatch(value):
        yield Bad(f"{value!r} is not an http(s) URL", "write a URL starting with http:// or https://")


# --- decoding internals -------------------------------------------------------------------------


def _fold(text: str) -> tuple[str, ...]:
    # Go's strings.EqualFold compares rune by rune with simple folding; casefold per character is close.
    return tuple(map(str.casefold, text))


def _match_keys(cls: type[Any], raw: Mapping[Any, Any]) -> dict[str, str]:
    """field name -> the key of `raw` that sets it: the exact key, else the first case-insensitive one."""
    out: dict[str, str] = {}
    used: set[str] = set()
    params = _params_of(cls)
    for p in params:
        if p.key in raw:
            out[p.field.name] = p.key
            used.add(p.key)
    folded_raw: dict[str, tuple[str, ...]] | None = None  # each key of `raw` folded, when first needed
    for p in params:
        if p.field.name in out:
            continue
        if folded_raw is None:
            folded_raw = {key: _fold(key) for key in raw if isinstance(key, str)}
        for key, folded in folded_raw.items():
            if key not in used and folded == p.folded:
                out[p.field.name] = key
                used.add(key)
                break
    return out


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _type_label(tp: Any) -> str:
    inner, _ = _unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if inner is str:
        return "string"
    if inner is bool:
        return "boolean"
    if inner is int:
        return "integer"
    if origin is tuple or origin is list:
        return "list of strings"
    if origin is not None and issubclass(origin, Mapping):
        return "map of strings"
    return str(inner)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({_short(value)!r})"
    if isinstance(value, Mapping):
        return "a map"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def _scalar_text(value: Any) -> str | None:
    """The text of a YAML scalar as Go's %v prints it; None for lists and maps."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value
    return None


def _decode_value(tp: Any, value: Any, path: str, mode: Decoding) -> tuple[Any, list[ParamProblem]]:
    inner, _ = _unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if inner is str:
        return _decode_str(value, path, mode, path)
    if inner is bool:
        return _decode_bool(value, path, mode)
    if inner is int:
        return _decode_int(value, path, mode)
    if origin is tuple or origin is list:
        return _decode_list(value, path, mode)
    if origin is not None and issubclass(origin, Mapping):
        return _decode_map(value, path, mode)
    raise TypeError(f"unsupported parameter type {tp!r} at {path}")


def _problem(path: str, want: str, value: Any, hint: str) -> list[ParamProblem]:
    return [ParamProblem(path, f"expected {want}, got {_describe(value)}", hint)]


def _decode_str(value: Any, path: str, mode: Decoding, key: str = "") -> tuple[Any, list[ParamProblem]]:
    if value is None:
        return "", []  # a null inside a list or map is Go's zero value
    if isinstance(value, str):
        return value, []
    text = _scalar_text(value)
    if mode == "settings" and text is not None:
        return text, []
    if text is not None:
        written = f'{key}: "{text}"' if key else f'"{text}"'
        return None, _problem(path, "a string", value, f"quote the value: {written}")
    return None, _problem(path, "a string", value, "write a single quoted value")


def _decode_bool(value: Any, path: str, mode: Decoding) -> tuple[Any, list[ParamProblem]]:
    if isinstance(value, bool):
        return value, []
    text = _scalar_text(value)
    if mode == "settings" and text is not None:
        # Go's strconv.ParseBool
        if text in ("1", "t", "T", "TRUE", "true", "True"):
            return True, []
        if text in ("0", "f", "F", "FALSE", "false", "False"):
            return False, []
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return None, _problem(path, "true or false", value, f"write {value.lower()} without quotes")
    return None, _problem(path, "true or false", value, "write true or false")


def _decode_int(value: Any, path: str, mode: Decoding) -> tuple[Any, list[ParamProblem]]:
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value):
        number = int(value)  # mapstructure truncates a float into an int field
    elif mode == "settings" and isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value):
        number = int(value)
    if number is None:
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
            hint = f"write the number without quotes: {value.strip()}"
        else:
            hint = "write a whole number, e.g. 5"
        return None, _problem(path, "an integer", value, hint)
    if not _INT64[0] <= number <= _INT64[1]:
        return None, [ParamProblem(path, f"{number} is out of range", "write a smaller number")]
    return number, []


def _decode_list(value: Any, path: str, mode: Decoding) -> tuple[Any, list[ParamProblem]]:
    if not isinstance(value, list | tuple):
        example = f'["{value}"]' if isinstance(value, str) else '["..."]'
        return None, _problem(path, "a list of strings", value, f"write a YAML list, e.g. {example}")
    items: list[str] = []
    problems: list[ParamProblem] = []
    for i, item in enumerate(value):
        decoded, found = _decode_str(item, f"{path}[{i}]", mode)
        problems.extend(found)
        items.append(decoded)
    return tuple(items), problems


def _decode_map(value: Any, path: str, mode: Decoding) -> tuple[Any, list[ParamProblem]]:
    if not isinstance(value, Mapping):
        return None, _problem(path, "a map of strings", value, 'write key: "value" pairs on their own lines')
    out: dict[str, str] = {}
    problems: list[ParamProblem] = []
    for key, item in value.items():
        if not isinstance(key, str):
            text = _scalar_text(key)
            problems.append(
                ParamProblem(f"{path}[{key}]", f"key {key!r} is not a string", f'quote the key: "{text or key}"')
            )
            continue
        decoded, found = _decode_str(item, f"{path}[{key}]", mode, key)
        problems.extend(found)
        out[key] = decoded
    return out, problems


def _to_json(value: Any) -> Any:
    if type(value) in _JSON_SCALARS:  # most defaults: no ABC check needed
        return value
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    return value
