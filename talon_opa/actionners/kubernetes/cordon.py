"""kubernetes:cordon — mark the pod's node unschedulable."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar
from urllib.parse import quote

from talon_opa.actionners.kubernetes import _pods
from talon_opa.core.errors import StepFailed
from talon_opa.core.kube import KubeClient
from talon_opa.plugins.params import NoParams
from talon_opa.plugins.runtime import Actionner, Outcome
from talon_opa.plugins.spec import Grant, Spec

if TYPE_CHECKING:
    from talon_opa.core.events import Alert

GRANTS = (Grant(("",), ("pods",), ("get",)), Grant(("",), ("nodes",), ("get", "patch")))


async def node_of(kube: KubeClient, alert: Alert) -> str:
    """The name of the node running the alert's pod; a pod not scheduled yet fails the step."""
    ref = _pods.target(alert)
    pod = await _pods.get_pod(kube, ref)
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    if not node:
        raise StepFailed(f"{ref} runs on no node yet", hint="the pod is not scheduled: there is no node to act on")
    return node


async def cordon(kube: KubeClient, node: str) -> bool:
    """Make the node unschedulable; False when it already was (nothing written)."""
    path = f"/api/v1/nodes/{quote(node, safe='')}"
    current = await kube.get(path)
    if (current.get("spec") or {}).get("unschedulable") is True:
        return False
    # a merge patch of one field: concurrent writers of other fields are untouched, and a re-run converges
    await kube.patch(path, {"spec": {"unschedulable": True}})
    return True


class Cordon(Actionner[NoParams]):
    spec: ClassVar[Spec[NoParams]] = Spec(
        name="kubernetes:cordon",
        kind="actionner",
        clients=("kube",),
        description="Cordon the node running the pod (no new pods are scheduled on it)",
        params=NoParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        grants=GRANTS,
        example="""\
- action: Cordon the node
  actionner: kubernetes:cordon
""",
    )

    async def run(self, alert: Alert, params: NoParams) -> Outcome:
        kube = self.clients.kube
        node = await node_of(kube, alert)
        if await cordon(kube, node):
            return Outcome.done(f"the node '{node}' has been cordoned", node=node)
        return Outcome.done(f"the node '{node}' was already cordoned", node=node)
