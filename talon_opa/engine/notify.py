"""Notifications: each result goes to `default_notifiers` and the step's notifiers, concurrently.

Each send is a `send notification` span under the step, has the step deadline, and is counted; a failing
notifier is logged, traced and counted as a notification failure, and never fails the step or blocks the
other notifiers. Inside `alongside()` (the executor runs an alert's plan in it), the sends run beside the
alert's next steps instead of before them, as Talon's notification goroutines do: a slow or hanging
receiver no longer delays the next action; the alert is finished only when its notifications are.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Sequence

from opentelemetry import trace

from talon_opa.core import logs
from talon_opa.engine import telemetry
from talon_opa.engine.instances import Instances, UnknownCluster
from talon_opa.engine.metrics import Metrics
from talon_opa.opa.plan import Step
from talon_opa.plugins.notes import Note

log = logs.get("execute")


# the current alert's group of notification tasks (set by `alongside`; each worker task has its own)
_ALONGSIDE: contextvars.ContextVar[asyncio.TaskGroup | None] = contextvars.ContextVar(
    "talon_opa_notifications", default=None
)


class NotConfigured(Exception):
    """A notifier named by a step is known but was not built (not in the configuration)."""


class Notifications:
    """Sends notes to the notifiers the engine built."""

    def __init__(
        self,
        instances: Instances,
        *,
        metrics: Metrics,
        tracer: trace.Tracer,
        default_notifiers: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> None:
        self._instances = instances
        self._metrics = metrics
        self._tracer = tracer
        self.default_notifiers = tuple(default_notifiers)
        self._timeout = timeout

    @contextlib.asynccontextmanager
    async def alongside(self) -> AsyncIterator[None]:
        """Within it, `notify` returns at once and its sends run in the background; at exit, all have ended."""
        async with asyncio.TaskGroup() as group:
            token = _ALONGSIDE.set(group)
            try:
                yield
            finally:
                _ALONGSIDE.reset(token)

    async def notify(self, step: Step, note: Note) -> None:
        """Send the note to default_notifiers and the step's notifiers, concurrently; failures are reported."""
        built = self._instances.notifiers
        known = self._instances.registry.notifiers
        # a rule's notifier unknown to the registry was reported when the rules loaded (Talon ignores it)
        names = [n for n in dict.fromkeys([*self.default_notifiers, *step.notifiers]) if n in built or n in known]
        if not names:
            return
        group = _ALONGSIDE.get()
        if group is not None:
            group.create_task(self._send(names, step, note), name=f"notify-{step.action}")
            return
        await self._send(names, step, note)

    async def _send(self, names: Sequence[str], step: Step, note: Note) -> None:
        async with asyncio.TaskGroup() as tg:
            for name in names:
                tg.create_task(self._notify_one(name, step, note), name=f"notify-{name}")

    async def _notify_one(self, name: str, step: Step, note: Note) -> None:
        extra = {"notifier": name, "stage": note.stage, "rule": step.rule, "action": step.action}
        with self._tracer.start_as_current_span(
            telemetry.SEND_NOTIFICATION, attributes={telemetry.NOTIFIER: name, telemetry.STAGE: note.stage}
        ) as span:
            status = "success"
            try:
                notifier = self._instances.notifier(name, note.cluster)
                if notifier is None:
                    raise NotConfigured(f"notifier {name!r} is not configured (add it to the config)")
                async with asyncio.timeout(self._timeout):
                    await notifier.notify(note)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                status = "failure"
                kinds = {NotConfigured: "unknown_notifier", UnknownCluster: "unknown_cluster"}
                kind = kinds.get(type(e), type(e).__name__)
                telemetry.fail(span, e if not isinstance(e, TimeoutError) else "timed out", kind)
                log.error("notification", extra={**extra, "status": "failure", "error": str(e) or kind})
            else:
                telemetry.ok(span)
                log.info("notification", extra={**extra, "status": "success"})
            self._metrics.notifications.labels(step.rule, step.action, step.actionner, name, status).inc()
