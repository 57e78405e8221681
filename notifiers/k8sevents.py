"""k8sevents — record each result as a Kubernetes Event on the pod."""

from __future__ import annotations

from typing import ClassVar

from actionners.base import Grant, Spec
from actionners.params import NoParams


class K8sEvents:
    spec: ClassVar[Spec[NoParams]] = Spec(
        name="k8sevents",
        kind="notifier",
        description="Create a Kubernetes Event about the pod for each action and output result",
        params=NoParams,
        grants=(
            Grant(("",), ("events",), ("create",)),
            Grant(("",), ("namespaces", "pods"), ("get",)),
        ),
        example="""\
default_notifiers:
  - k8sevents
""",
    )
