"""What the intake hands the engine: one accepted alert as a serialisable work item.

A `WorkItem` is everything needed to process an alert anywhere: its id, the alert as received (the body
bytes, decoded again on the other side exactly as the intake decoded them), and the W3C trace context
it came with. It is what a distributed queue carries (`encode`/`decode`); in process, the decoded alert
rides along so nothing is decoded twice.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span

from talon_opa.core import events
from talon_opa.core.errors import AlertError
from talon_opa.core.slots import slot_init

if TYPE_CHECKING:
    from talon_opa.opa.plan import Plan

FORMAT = 1  # version of the encoded form


@slot_init
@dataclass(frozen=True, slots=True)
class WorkItem:
    """One accepted alert: id, alert, and the trace context of the request that brought it."""

    alert_id: str
    alert: events.Alert = field(compare=False)
    body: bytes
    content_type: str = ""
    traceparent: str = ""
    tracestate: str = ""

    def trace_headers(self) -> dict[str, str]:
        """The incoming trace context as W3C headers (empty when the request had none)."""
        headers = {"traceparent": self.traceparent, "tracestate": self.tracestate}
        return {k: v for k, v in headers.items() if v}

    def encode(self) -> bytes:
        """The item as one JSON document (what a distributed queue stores)."""
        doc: dict[str, Any] = {
            "format": FORMAT,
            "id": self.alert_id,
            "body": self.body.decode("utf-8", "surrogateescape"),
            "content_type": self.content_type,
            "traceparent": self.traceparent,
            "tracestate": self.tracestate,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> WorkItem:
        """An item from `encode`'s bytes; AlertError when they are not one."""
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise AlertError(f"work item format {doc.get('format')!r} is not {FORMAT}", hint="upgrade the engine")
            body = str(doc["body"]).encode("utf-8", "surrogateescape")
            content_type = str(doc.get("content_type") or "")
            return cls(
                alert_id=str(doc["id"]),
                alert=events.decode_alert(body, content_type or None),
                body=body,
                content_type=content_type,
                traceparent=str(doc.get("traceparent") or ""),
                tracestate=str(doc.get("tracestate") or ""),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise AlertError(f"not a work item: {e}", hint="the queue holds something the engine did not write") from e


@dataclass(eq=False, slots=True)
class Job:
    """A work item under processing in this engine, with its root `receive alert` span."""

    item: WorkItem
    span: Span  # ended when processing ends
    received: float  # time.monotonic() when accepted
    early: asyncio.Task[Plan] | None = None  # its decision, started while it waited behind its pod's alerts

    @property
    def alert_id(self) -> str:
        return self.item.alert_id

    @property
    def alert(self) -> events.Alert:
        return self.item.alert
