"""Alert decoding (Talon-compatible, DESIGN §3.1) and the normalised OPA input (docs/rego.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from talon_opa.core.errors import AlertError
from talon_opa.core.events import Alert, decode_alert, number_text, strip_prefix, value_text
from talon_opa.engine.dedup import dedup_key
from tests.harness.paths import ALERTS

SAMPLES = ALERTS
SAMPLE_FILES = sorted(SAMPLES.glob("*.json"))

INPUT_KEYS = {
    "rule",
    "priority",
    "priority_rank",
    "source",
    "hostname",
    "time",
    "output",
    "tags",
    "tags_set",
    "output_fields",
    "output_fields_str",
}


def decode(doc: Any) -> Alert:
    return decode_alert(json.dumps(doc).encode())


def error(body: bytes, content_type: str | None = None) -> AlertError:
    with pytest.raises(AlertError) as info:
        decode_alert(body, content_type)
    return info.value


# --- every sample alert -------------------------------------------------------------------------


@pytest.mark.skipif(not SAMPLE_FILES, reason="samples not found (set TALON_OPA_SHARED)")
@pytest.mark.parametrize("path", SAMPLE_FILES, ids=[p.stem for p in SAMPLE_FILES])
def test_every_sample_alert_decodes_into_the_normalised_input(path: Path) -> None:
    raw = json.loads(path.read_text())
    alert = decode_alert(path.read_bytes(), "application/json")
    doc = alert.opa_input()
    assert set(doc) == INPUT_KEYS
    assert doc["rule"] == raw["rule"]
    assert doc["priority"] == raw["priority"]
    assert doc["priority_rank"] == {"Debug": 1, "Notice": 3, "Warning": 4, "Critical": 6}[raw["priority"]]
    assert doc["source"] == raw.get("source", "syscall")
    assert doc["hostname"] == raw.get("hostname", "")
    assert doc["time"] == raw["time"]
    assert doc["tags"] == raw.get("tags", [])
    assert doc["tags_set"] == dict.fromkeys(raw.get("tags", []), True)
    assert doc["output_fields"] == raw["output_fields"]
    assert set(doc["output_fields_str"]) == set(raw["output_fields"])
    for key, value in raw["output_fields"].items():
        if isinstance(value, list):
            expected = "[" + " ".join(value) + "]"
        elif value is None:
            expected = "<nil>"
        else:
            expected = value if isinstance(value, str) else str(value)
        assert doc["output_fields_str"][key] == expected
    # the prefix is gone, the text after it is intact
    assert raw["output"].endswith(doc["output"])
    assert not doc["output"][:2].isdigit()
    assert dedup_key(("output",), alert) == doc["output"]
    # the input is what the engine sends: plain JSON, numbers exact
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc


def test_sample_numbers_keep_their_exact_decimal_text() -> None:
    alert = decode_alert((SAMPLES / "falco-contact-k8s-api-server-from-container.json").read_bytes())
    fields = alert.opa_input()["output_fields_str"]
    assert fields["evt.time"] == "1784017435004981330"  # beyond float64 precision, kept exactly
    assert fields["fd.rport"] == "443"
    assert fields["user.loginuid"] == "-1"
    assert alert.remote_port() == "443"
    assert alert.pod_name() == "payments-api-6d8f7c9b5-x2k4p"
    assert alert.namespace() == "payments"


def test_k8saudit_sample_uses_the_audit_accessors() -> None:
    alert = decode_alert((SAMPLES / "k8saudit-attach-exec-pod.json").read_bytes())
    assert alert.source == "k8s_audit"
    assert alert.pod_name() == "payments-api-6d8f7c9b5-x2k4p"  # ka.target.name
    assert alert.namespace() == "payments"  # ka.target.namespace
    assert alert.target_resource() == "pods"


def test_null_output_fields_render_as_nil_and_give_no_accessor_value() -> None:
    alert = decode_alert((SAMPLES / "falco-find-aws-credentials-on-host.json").read_bytes())
    assert alert.opa_input()["output_fields_str"]["k8s.ns.name"] == "<nil>"
    assert alert.namespace() is None
    assert alert.pod_name() is None


# --- Talon-compatible decoding ------------------------------------------------------------------


def test_keys_are_case_insensitive_and_the_last_occurrence_wins() -> None:
    alert = decode_alert(b'{"Rule": "A", "rule": "B", "PRIORITY": "Warning", "Output_Fields": {"k": 1}}')
    assert (alert.rule, alert.priority, alert.output_fields) == ("B", "Warning", {"k": 1})


def test_null_string_keeps_the_earlier_value_like_go() -> None:
    assert decode_alert(b'{"rule": "A", "Rule": null}').rule == "A"


def test_repeated_output_fields_add_to_the_map_and_null_clears_it() -> None:
    assert decode_alert(b'{"output_fields": {"a": 1}, "OUTPUT_FIELDS": {"b": 2}}').output_fields == {"a": 1, "b": 2}
    assert decode_alert(b'{"output_fields": {"a": 1}, "output_fields": null}').output_fields == {}


def test_duplicate_keys_inside_output_fields_last_wins() -> None:
    assert decode_alert(b'{"output_fields": {"k": "a", "k": "b"}}').output_fields == {"k": "b"}


def test_unknown_keys_are_ignored() -> None:
    alert = decode({"uuid": "x", "rule": "R", "whatever": [1, 2]})
    assert alert.rule == "R"


@pytest.mark.parametrize(
    ("doc", "source"),
    [
        ({}, "syscall"),
        ({"source": ""}, "syscall"),
        ({"source": None}, "syscall"),
        ({"source": "k8s_audit"}, "k8s_audit"),
    ],
)
def test_source_defaults_to_syscall(doc: dict[str, Any], source: str) -> None:
    assert decode(doc).source == source


@pytest.mark.parametrize(
    "time",
    [
        "2026-07-14T08:21:07.114583261Z",
        "2026-07-14T08:21:07Z",
        "2026-07-14T08:21:07+02:00",
        "2024-02-29T23:59:59.1-05:30",
        "2026-07-14T08:21:07.1234567890123Z",
        "0000-02-29T00:00:00Z",  # Go's year 0 is a leap year
        "2000-02-29T00:00:00Z",
        "2026-01-31T00:00:00Z",
        "2026-12-31T23:59:59,5+23:59",
        "2026-04-30T00:00:00-00:00",
    ],
)
def test_time_accepts_rfc3339(time: str) -> None:
    assert decode({"time": time}).time == time


@pytest.mark.parametrize("doc", [{}, {"time": None}])
def test_time_absent_or_null_is_none(doc: dict[str, Any]) -> None:
    assert decode(doc).time is None
    assert decode(doc).opa_input()["time"] is None


@pytest.mark.parametrize(
    "time",
    [
        "2026-07-14 08:21:07Z",
        "2026-07-14T08:21:07",
        "14/07/2026",
        "2026-02-30T00:00:00Z",
        "2026-07-14T25:00:00Z",
        "",
        "2025-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-00-10T00:00:00Z",
        "2026-07-00T00:00:00Z",
        "2026-07-32T00:00:00Z",
        "2026-07-14T24:00:00Z",
        "2026-07-14T08:60:00Z",
        "2026-07-14T08:21:60Z",
        "2026-07-14T08:21:07+24:00",
        "2026-07-14T08:21:07+02:60",
        "2026-07-14T08:21:07+0200",
        "2026-07-14t08:21:07z",
        "2026-07-14T08:21:07.Z",
        "\uff12\uff10\uff12\uff16-07-14T08:21:07Z",  # fullwidth digits
    ],
)
def test_time_rejects_other_formats(time: str) -> None:
    e = error(json.dumps({"time": time}).encode())
    assert (e.status, e.field) == (400, "time")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rule", 1),
        ("priority", True),
        ("output", ["x"]),
        ("hostname", {}),
        ("source", 1.5),
        ("time", 1784017267),
        ("tags", "a, b"),
        ("output_fields", ["x"]),
        ("output_fields", "k=v"),
        ("context", 1),
        ("Rule", 1),
    ],
)
def test_wrong_types_are_rejected_naming_the_field(key: str, value: Any) -> None:
    e = error(json.dumps({key: value}).encode())
    assert e.status == 400
    assert e.field == key.lower()
    assert key.lower() in str(e)


def test_output_fields_accept_any_json_type() -> None:
    fields = {"s": "x", "i": 8080, "f": 1.5, "b": False, "n": None, "o": {"k": [1]}, "a": ["x", 2]}
    assert decode({"output_fields": fields}).output_fields == fields


def test_integers_beyond_2_63_are_kept_exactly() -> None:
    big = 2**64 + 1
    body = b'{"output_fields": {"n": 18446744073709551617, "m": -99999999999999999999999}}'
    alert = decode_alert(body)
    assert alert.output_fields["n"] == big
    assert alert.opa_input()["output_fields_str"] == {"n": "18446744073709551617", "m": "-99999999999999999999999"}
    assert '"n": 18446744073709551617' in json.dumps(alert.opa_input())


def test_an_integer_longer_than_4000_digits_is_refused_even_in_a_long_body() -> None:
    padding = "x" * 5000  # a body longer than any integer it can hold is checked integer by integer
    assert decode({"output": padding, "output_fields": {"n": int("9" * 4000)}}).output_fields["n"] == int("9" * 4000)
    body = b'{"output": "%s", "output_fields": {"n": -%s}}' % (padding.encode(), b"9" * 4000)
    assert "integer with 4001 digits is too long" in str(error(body))


# a key no field reads, nested beyond MAX_DEPTH: the body is decoded the long way (each nesting checked)
DEEP_UNKNOWN = b', "zz": ' + b"[" * 40 + b"]" * 40 + b"}"


@pytest.mark.parametrize(
    "body",
    [
        b'{"output_fields": {"k": "a", "k": "b"}, "tags": ["a", 1], "rule": "R"}',
        b'{"output": "[x] {y}", "output_fields": {"k": "v"}}',
        b'{"output_fields": {"o": {"k": [1, {"a": 1, "a": 2}]}, "s": "x{["}, "tags": ["t", {"x": [1]}],'
        b' "context": {"c": {"d": 1}}}',
        b'{"rule": "a", "Rule": "b", "rule": "c", "output_fields": {"a": {"x": 1}}, "OUTPUT_FIELDS": {"b": [2]},'
        b' "output_fields": {"a": 3}}',
        b'{"uuid": {"a": 1}, "extra": [1, [2]], "output_fields": {"k": {"n": 1}}}',
        b'{"output_fields": {"a": {"x": 1}}, "output_fields": null, "output_fields": {"b": {"c": {"c": 2}}}}',
        b'{"context": {"a": [{"b": 1}]}, "context": {"c": 1, "a": 2}, "tags": [[[]]], "tags": [{}]}',
        b'{"tags": ["a", {"b": 1}]}',  # one bracket more than its containers: something nests
        b'{"output_fields": {"a": {}}}',
        b'{"context": {"a": []}}',
        b' \n{"output": "\xff{\xe2\x82", "output_fields": {"a\xc3": {"b": "\xf0\x9f\x98\x80"}}}',  # not UTF-8
    ],
)
def test_shallow_bodies_decode_as_the_long_way_does(body: bytes) -> None:
    def shape(value: Any) -> Any:  # the value with its containers' types (an object with a repeated key included)
        if isinstance(value, dict):
            return type(value).__name__, [(k, shape(v)) for k, v in value.items()]
        if isinstance(value, list):
            return "list", [shape(v) for v in value]
        return value

    short, long = decode_alert(body), decode_alert(body[:-1] + DEEP_UNKNOWN)
    assert short == long
    assert [shape(getattr(short, f)) for f in ("output_fields", "tags", "context")] == [
        shape(getattr(long, f)) for f in ("output_fields", "tags", "context")
    ]


@pytest.mark.parametrize(
    "body",
    [
        b'{"output_fields": {"a": {"b": 1}}, "rule": 5}',
        b'{"tags": [{"a": 1}], "output_fields": [1]}',
        b'{"output_fields": {"a": {}}, "time": "2026-02-30T00:00:00Z", "rule": 1}',
        b'{"rule": {"a": [1]}}',
    ],
)
def test_shallow_bodies_are_refused_as_the_long_way_refuses_them(body: bytes) -> None:
    short, long = error(body), error(body[:-1] + DEEP_UNKNOWN)
    assert (str(short), short.field, short.status) == (str(long), long.field, long.status)


def test_tags_keep_non_strings_but_the_set_holds_strings_only() -> None:
    doc = decode({"tags": ["a", 1, "a", None]}).opa_input()
    assert doc["tags"] == ["a", 1, "a", None]
    assert doc["tags_set"] == {"a": True}


@pytest.mark.parametrize("body", [b"", b"   \n\t", b"{", b'{"rule": }', b"nope", b'{"rule": "a",}', b"\xef\xbb\xbf{}"])
def test_empty_or_malformed_bodies_are_400(body: bytes) -> None:
    e = error(body)
    assert (e.status, e.field) == (400, "")
    assert "json_output" in e.hint


@pytest.mark.parametrize("body", [b"[]", b'"alert"', b"42", b"true"])
def test_a_body_that_is_not_an_object_is_400(body: bytes) -> None:
    assert error(body).status == 400


@pytest.mark.parametrize("body", [b'{"output_fields": {"x": NaN}}', b'{"output_fields": {"x": Infinity}}'])
def test_nan_and_infinity_are_rejected_like_go(body: bytes) -> None:
    assert error(body).status == 400


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain; charset=utf-8", "TEXT/PLAIN"])
def test_text_plain_is_415_with_the_json_output_hint(content_type: str) -> None:
    e = error(b"12:00:00.000000000: Notice shell", content_type)
    assert e.status == 415
    assert "json_output: true" in e.hint


@pytest.mark.parametrize("content_type", [None, "application/json", "application/json; charset=utf-8", "x/y"])
def test_other_content_types_are_decoded(content_type: str | None) -> None:
    assert decode_alert(b'{"rule": "R"}', content_type).rule == "R"


def test_json_null_body_is_an_empty_alert() -> None:
    alert = decode_alert(b"null")
    assert alert == Alert()
    assert alert.opa_input()["source"] == "syscall"
    assert alert.opa_input()["priority_rank"] == 0


@pytest.mark.parametrize(
    "body", [b'{"rule": "A"} trailing garbage', b'{"rule": "A"}{"rule": "B"}', b'\n {"rule": "A"}\n']
)
def test_only_the_first_json_value_counts_like_gos_decoder(body: bytes) -> None:
    assert decode_alert(body).rule == "A"


def test_invalid_utf8_is_replaced_not_rejected() -> None:
    assert decode_alert(b'{"rule": "a\xffb"}').rule == "a\ufffdb"


@pytest.mark.parametrize(
    ("priority", "rank"),
    [
        ("Emergency", 8),
        ("alert", 7),
        ("CRITICAL", 6),
        ("Error", 5),
        ("Warning", 4),
        ("Notice", 3),
        ("Informational", 2),
        ("Debug", 1),
        ("Info", 0),
        ("", 0),
        ("Informational ", 0),
    ],
)
def test_priority_rank_uses_talons_table(priority: str, rank: int) -> None:
    assert decode({"priority": priority}).opa_input()["priority_rank"] == rank


# --- output prefix (DESIGN §4 fix) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "stripped"),
    [
        ("08:21:07.114583261: Notice A shell was spawned", "A shell was spawned"),
        ("12:34:56.123456789: Informational foo", "foo"),  # Talon leaves "rmational foo"
        ("12:34:56.123456789: Info foo", "foo"),
        ("12:34:56.123456789: critical foo", "foo"),
        ("2026-07-14T08:21:19.502117450+0000: Warning Sensitive file", "Sensitive file"),
        ("2026-07-14T08:21:19.502117450Z: Error x", "x"),
        ("2026-07-14T08:21:19+02:00: Debug x", "x"),
        ("12:34:56.123456789: Errorless x", "12:34:56.123456789: Errorless x"),  # no word boundary in Talon
        ("Falco internal: syscall event drop.", "Falco internal: syscall event drop."),
        ("", ""),
        ("08:21:07.114583261: Notice", ""),
    ],
)
def test_output_prefix_is_stripped(output: str, stripped: str) -> None:
    assert strip_prefix(output) == stripped
    alert = decode({"output": output})
    assert (alert.output, alert.raw_output, dedup_key(("output",), alert)) == (stripped, output, stripped)


# --- string forms of output field values --------------------------------------------------------


@pytest.mark.parametrize(
    ("json_text", "text"),
    [
        ('"payments"', "payments"),
        ('""', ""),
        ("1234567", "1234567"),  # Talon: 1.234567e+06
        ("1000000", "1000000"),  # Talon: 1e+06
        ("-1", "-1"),
        ("0", "0"),
        ("1.50", "1.5"),
        ("1e6", "1000000"),
        ("1E+2", "100"),
        ("0.00001", "0.00001"),  # Talon: 1e-05
        ("-0.0", "0"),
        ("1784017435004981330", "1784017435004981330"),
        ("1e999", "1e999"),
        ("true", "true"),
        ("false", "false"),
        ("null", "<nil>"),
        ('{"b": 1, "a": "x"}', "map[a:x b:1]"),
        ('["a", 2, null]', "[a 2 <nil>]"),
        ("[]", "[]"),
    ],
)
def test_output_fields_str_rendering(json_text: str, text: str) -> None:
    alert = decode_alert(f'{{"output_fields": {{"k": {json_text}}}}}'.encode())
    assert alert.opa_input()["output_fields_str"]["k"] == text
    json.dumps(alert.opa_input(), allow_nan=False)  # always valid JSON for OPA


def test_value_text_and_number_text_on_python_values() -> None:
    assert value_text(3) == "3"
    assert value_text(2.5) == "2.5"
    assert number_text(1e-7) == "0.0000001"
    assert value_text(True) == "true"


# --- accessors (Talon §1.4) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "pod", "namespace", "ip"),
    [
        ({"k8s.pod.name": "p", "k8s.ns.name": "n", "fd.rip": "1.2.3.4"}, "p", "n", "1.2.3.4"),
        ({"ka.target.pod.name": "p2", "ka.target.namespace": "n2", "fd.sip": "5.6.7.8"}, "p2", "n2", "5.6.7.8"),
        ({"ka.target.name": "p3"}, "p3", None, None),
        ({"k8s.pod.name": {"x": 1}, "k8s.ns.name": None, "fd.rip": ""}, None, None, None),
        ({"k8s.pod.name": "", "ka.target.name": "fallback"}, "fallback", None, None),
    ],
)
def test_accessors(fields: dict[str, Any], pod: str | None, namespace: str | None, ip: str | None) -> None:
    alert = decode({"output_fields": fields})
    assert (alert.pod_name(), alert.namespace(), alert.remote_ip()) == (pod, namespace, ip)


def test_numeric_port_and_protocol_fallbacks() -> None:
    alert = decode({"output_fields": {"fd.sport": 8080, "fd.sproto": "tcp"}})
    assert (alert.remote_port(), alert.remote_protocol()) == ("8080", "tcp")


def test_context_is_accepted_as_an_object() -> None:
    assert decode({"context": {"a": 1}}).context == {"a": 1}
