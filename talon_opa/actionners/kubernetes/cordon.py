"""kubernetes:cordon — mark the pod's node unschedulable."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar
from urllib.parse import quote

from talon_opa.actionners.kubernetes import _pods
from talon_opa.core.errors import StepFailed
from talon_opa.core.kube import KubeApiError, KubeClient
from talon_opa.plugins.params import NoParams
from talon_opa.plugins.reversal import Reversal, Reversible, Undone
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


async def cordon(kube: KubeClient, node: str, actionner: str = "kubernetes:cordon") -> Reversal | None:
    """Make the node unschedulable: how to uncordon it, or None when it already was (nothing written)."""
    path = f"/api/v1/nodes/{quote(node, safe='')}"
    current = await kube.get(path)
    if (current.get("spec") or {}).get("unschedulable") is True:
        return None
    # a merge patch of one field: concurrent writers of other fields are untouched, and a re-run converges
    await kube.patch(path, {"spec": {"unschedulable": True}})
    uid = str((current.get("metadata") or {}).get("uid") or "")
    return Reversal(actionner, f"uncordon the node '{node}'", {"node": node, "uid": uid})


async def uncordon(kube: KubeClient, reversal: Reversal) -> Undone:
    """Make the node we cordoned schedulable again; nothing when it is gone, replaced or already uncordoned."""
    node, uid = str(reversal.state["node"]), str(reversal.state.get("uid") or "")
    path = f"/api/v1/nodes/{quote(node, safe='')}"
    try:
        current = await kube.get(path)
    except KubeApiError as e:
        if e.status == 404:
            return Undone("already_undone", f"the node '{node}' is gone: nothing to undo")
        raise
    if uid and (current.get("metadata") or {}).get("uid") != uid:
        return Undone("already_undone", f"the node '{node}' was deleted and made again: nothing of ours to undo")
    if (current.get("spec") or {}).get("unschedulable") is not True:
        return Undone("already_undone", f"the node '{node}' is already uncordoned")
    # the test makes it atomic: uncordoned by someone else in between, the patch fails instead of writing
    ops = [
        {"op": "test", "path": "/spec/unschedulable", "value": True},
        {"op": "remove", "path": "/spec/unschedulable"},
    ]
    try:
        await kube.patch(path, ops, patch_type="json")
    except KubeApiError as e:
        if e.status == 422:
            return Undone("already_undone", f"the node '{node}' was uncordoned meanwhile")
        raise
    return Undone("undone", f"the node '{node}' has been uncordoned")


class Cordon(Actionner[NoParams], Reversible):
    spec: ClassVar[Spec[NoParams]] = Spec(
        name="kubernetes:cordon",
        kind="actionner",
        clients=("kube",),
        description="Cordon the node running the pod (no new pods are scheduled on it)",
        params=NoParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        grants=GRANTS,
        reversible=True,
        example="""\
- action: Cordon the node
  actionner: kubernetes:cordon
""",
    )

    async def run(self, alert: Alert, params: NoParams) -> Outcome:
        kube = self.clients.kube
        node = await node_of(kube, alert)
        reversal = await cordon(kube, node, self.spec.name)
        if reversal is not None:
            return Outcome.done(f"the node '{node}' has been cordoned", node=node).undone_by(reversal)
        return Outcome.done(f"the node '{node}' was already cordoned", node=node)

    async def undo(self, reversal: Reversal) -> Undone:
        return await uncordon(self.clients.kube, reversal)
