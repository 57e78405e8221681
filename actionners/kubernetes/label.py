"""kubernetes:label — add, change or remove labels of the pod or of its node."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from actionners.base import Grant, Spec
from actionners.params import non_empty, param

POD_GRANTS = (Grant(("",), ("pods",), ("get", "patch")),)
NODE_GRANTS = (Grant(("",), ("pods",), ("get",)), Grant(("",), ("nodes",), ("get", "patch")))


def metadata_grants(level: str) -> tuple[Grant, ...]:
    """What patching the pod's (or its node's) metadata needs; shared by label and annotation."""
    return NODE_GRANTS if level == "node" else POD_GRANTS


LEVEL_DOC = '"node": the node running the pod; anything else: the pod'


@dataclass(frozen=True, kw_only=True, slots=True)
class LabelParams:
    labels: Mapping[str, str] = param(
        doc='labels to set; an empty value ("") removes the label; values are strings (quote "true")',
        required=True,
        check=non_empty("should have at least one label", 'add a label, e.g. suspicious: "true"'),
    )
    level: str = param("pod", doc=LEVEL_DOC)


class Label:
    spec: ClassVar[Spec[LabelParams]] = Spec(
        name="kubernetes:label",
        kind="actionner",
        description="Add, change or remove labels of the pod or of its node",
        params=LabelParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        grants=POD_GRANTS + NODE_GRANTS,
        grants_for=lambda p: metadata_grants(p.level),
        example="""\
- action: Label the pod
  actionner: kubernetes:label
  parameters:
    level: pod
    labels:
      security.falco.org/suspicious: "true"
      stale-label: ""
""",
    )
