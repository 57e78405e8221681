"""kubernetes:annotation — add, change or remove annotations of the pod or of its node."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from talon_opa.actionners.kubernetes.label import (
    LEVEL_DOC,
    NODE_GRANTS,
    POD_GRANTS,
    metadata_grants,
    run_metadata,
    undo_metadata,
)
from talon_opa.plugins.params import non_empty, param
from talon_opa.plugins.reversal import Reversal, Reversible, Undone
from talon_opa.plugins.runtime import Actionner
from talon_opa.plugins.spec import Spec

if TYPE_CHECKING:
    from talon_opa.core.events import Alert
    from talon_opa.plugins.runtime import Outcome


@dataclass(frozen=True, kw_only=True, slots=True)
class AnnotationParams:
    annotations: Mapping[str, str] = param(
        doc='annotations to set; an empty value ("") removes the annotation; values are strings',
        required=True,
        check=non_empty("should have at least one annotation", 'add an annotation, e.g. falco.org/alert: "shell"'),
    )
    level: str = param("pod", doc=LEVEL_DOC)


class Annotation(Actionner[AnnotationParams], Reversible):
    spec: ClassVar[Spec[AnnotationParams]] = Spec(
        name="kubernetes:annotation",
        kind="actionner",
        clients=("kube",),
        description="Add, change or remove annotations of the pod or of its node",
        params=AnnotationParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        grants=POD_GRANTS + NODE_GRANTS,
        grants_for=lambda p: metadata_grants(p.level),
        reversible=True,
        example="""\
- action: Annotate the pod
  actionner: kubernetes:annotation
  parameters:
    level: pod
    annotations:
      security.falco.org/last-alert: "Terminal shell in container"
""",
    )

    async def run(self, alert: Alert, params: AnnotationParams) -> Outcome:
        kube = self.clients.kube
        return await run_metadata(kube, alert, "annotations", params.annotations, params.level, self.spec.name)

    async def undo(self, reversal: Reversal) -> Undone:
        return await undo_metadata(self.clients.kube, reversal)
