"""The work item the intake hands the engine survives a trip through its encoded form unchanged."""

from __future__ import annotations

import json

import pytest

from talon_opa.core.errors import AlertError
from talon_opa.core.events import decode_alert
from talon_opa.engine.work import WorkItem

BODY = json.dumps(
    {
        "output": "08:21:07.114583261: Notice A shell pid=1234567 big=18446744073709551617",
        "priority": "Notice",
        "rule": "Terminal shell in container",
        "time": "2024-05-06T08:21:07.114583261Z",
        "output_fields": {"k8s.pod.name": "api-1", "proc.pid": 1234567, "big": 18446744073709551617, "f": 1e-7},
        "tags": ["shell", "mitre_execution"],
    }
).encode()


def test_an_item_decodes_to_the_same_alert_id_and_trace_context() -> None:
    item = WorkItem(
        "abc123",
        decode_alert(BODY, "application/json"),
        BODY,
        "application/json",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "vendor=x",
    )
    back = WorkItem.decode(item.encode())
    assert back == item
    assert back.alert == item.alert
    assert back.alert.output_fields["big"] == 18446744073709551617
    assert back.trace_headers() == {"traceparent": item.traceparent, "tracestate": "vendor=x"}


def test_bytes_that_are_not_an_item_are_refused_with_the_reason() -> None:
    with pytest.raises(AlertError, match="not a work item"):
        WorkItem.decode(b'{"format": 1}')
    with pytest.raises(AlertError, match="format 2 is not 1"):
        WorkItem.decode(b'{"format": 2, "id": "x", "body": "{}"}')
