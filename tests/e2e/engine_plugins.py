"""Scripted plugins for engine tests: the real specs of kubernetes:label / terminate, with a `run` that
records each call and behaves as its labels say ("behaviour": ok | fail | crash | sleep | wait), and a
notifier that records every note. The registry they form goes through the real translator and OPA.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, ClassVar

from talon_opa.actionners.kubernetes import label, log, terminate
from talon_opa.core.errors import StepFailed
from talon_opa.core.events import Alert
from talon_opa.outputs import file
from talon_opa.plugins.notes import Note
from talon_opa.plugins.params import NoParams
from talon_opa.plugins.registry import Registry
from talon_opa.plugins.runtime import Actionner, Artifact, Notifier, Outcome, Output
from talon_opa.plugins.spec import Spec


@dataclass
class Script:
    """What the plugins did, shared by the test and the plugins."""

    calls: list[tuple[str, str, str]] = field(default_factory=list)  # (actionner, pod, behaviour)
    notes: list[Note] = field(default_factory=list)
    contexts: list[dict[str, Any]] = field(default_factory=list)  # the alert's context per call
    artifacts: list[tuple[str, Artifact]] = field(default_factory=list)  # (destination, artifact)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    running: dict[str, int] = field(default_factory=dict)  # per pod: runs under way
    max_running: dict[str, int] = field(default_factory=dict)  # per pod: most concurrent runs seen
    fail_notifier: bool = False

    def reset(self) -> None:
        self.calls.clear()
        self.notes.clear()
        self.contexts.clear()
        self.artifacts.clear()
        self.gate = asyncio.Event()
        self.running.clear()
        self.max_running.clear()
        self.fail_notifier = False


SCRIPT = Script()


async def _behave(actionner: str, alert: Alert, behaviour: str) -> Outcome:
    pod = alert.pod_name() or ""
    SCRIPT.calls.append((actionner, pod, behaviour))
    SCRIPT.contexts.append(dict(alert.context))
    SCRIPT.running[pod] = SCRIPT.running.get(pod, 0) + 1
    SCRIPT.max_running[pod] = max(SCRIPT.max_running.get(pod, 0), SCRIPT.running[pod])
    try:
        if behaviour == "fail":
            raise StepFailed(f"scripted failure of {actionner}", hint="this is a test")
        if behaviour == "crash":
            raise KeyError("scripted bug")
        if behaviour == "sleep":
            await asyncio.sleep(30)
        if behaviour == "wait":
            await SCRIPT.gate.wait()
        return Outcome.done(f"{actionner} did {behaviour}", pod=pod, namespace=alert.namespace() or "")
    finally:
        SCRIPT.running[pod] -= 1


class ScriptedLabel(Actionner[label.LabelParams]):
    spec: ClassVar[Spec[Any]] = label.Label.spec

    async def run(self, alert: Alert, params: label.LabelParams) -> Outcome:
        return await _behave("kubernetes:label", alert, params.labels.get("behaviour", "ok"))


class ScriptedTerminate(Actionner[terminate.TerminateParams]):
    spec: ClassVar[Spec[Any]] = terminate.Terminate.spec

    async def run(self, alert: Alert, params: terminate.TerminateParams) -> Outcome:
        behaviour = "fail" if params.grace_period_seconds == 13 else "ok"
        return await _behave("kubernetes:terminate", alert, behaviour)


class Recorder(Notifier[NoParams]):
    spec: ClassVar[Spec[NoParams]] = Spec(
        name="recorder", kind="notifier", description="records notes (tests)", params=NoParams
    )

    async def notify(self, note: Note) -> None:
        SCRIPT.notes.append(note)
        if SCRIPT.fail_notifier:
            raise ConnectionError("scripted notifier outage")


class ScriptedLog(Actionner[Any]):
    """kubernetes:log's spec; its artifact is the pod's name repeated (empty for a pod named "empty")."""

    spec: ClassVar[Spec[Any]] = log.Log.spec

    async def run(self, alert: Alert, params: Any) -> Outcome:
        pod = alert.pod_name() or ""
        SCRIPT.calls.append(("kubernetes:log", pod, "ok"))
        data = b"" if pod == "empty" else f"logs of {pod}\n".encode()
        return Outcome.done(f"got logs of {pod}", Artifact("logs.txt", data, {"pod": pod}), pod=pod)


class ScriptedFile(Output[Any]):
    """local:file's spec; records artifacts, fails for a destination of /fail."""

    spec: ClassVar[Spec[Any]] = file.File.spec

    async def store(self, artifact: Artifact, params: Any) -> Outcome:
        if params.destination == "/fail":
            raise OSError("scripted: disk full")
        SCRIPT.artifacts.append((params.destination, artifact))
        return Outcome.done(f"stored {artifact.name} in {params.destination}")


def scripted_registry() -> Registry:
    return Registry.of(ScriptedLabel, ScriptedTerminate, ScriptedLog, ScriptedFile, Recorder)


class KubeLabel(Actionner[label.LabelParams]):
    """A minimal kubernetes:label over the KubeClient the engine hands it (its client wiring, for real)."""

    spec: ClassVar[Spec[Any]] = label.Label.spec

    async def run(self, alert: Alert, params: label.LabelParams) -> Outcome:
        pod, ns = alert.pod_name() or "", alert.namespace() or ""
        await self.clients.kube.patch(
            f"/api/v1/namespaces/{ns}/pods/{pod}", {"metadata": {"labels": dict(params.labels)}}
        )
        return Outcome.done(f"labelled pod {pod}", pod=pod, namespace=ns)


def kube_registry() -> Registry:
    return Registry.of(KubeLabel, Recorder)


# a rule terminating shells and telling the `recorder` notifier: the caps and approvals tests' plan
TERMINATE_SHELLS = """\
- rule: Terminate shells
  match:
    rules: [Terminal shell in container]
  notifiers: [recorder]
  actions:
    - action: Terminate
      actionner: kubernetes:terminate
"""


def labelled_note(trace_id: str, /, **changes: Any) -> Note:
    """The note of a successful `kubernetes:label` step on pod api-1 in payments, as notifiers receive it."""
    fields: dict[str, Any] = {
        "stage": "action",
        "status": "success",
        "rule": "Label shells",
        "action": "Label the pod",
        "actionner": "kubernetes:label",
        "objects": {"pod": "api-1", "namespace": "payments"},
        "output": "the pod 'api-1' in the namespace 'payments' has been labeled",
        "trace_id": trace_id,
    }
    return Note(**{**fields, **changes})
