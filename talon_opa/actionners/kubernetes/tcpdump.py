"""kubernetes:tcpdump — capture the pod's network traffic from an ephemeral container."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from talon_opa.plugins.params import between, param
from talon_opa.plugins.runtime import Planned
from talon_opa.plugins.spec import Grant, Spec


@dataclass(frozen=True, kw_only=True, slots=True)
class TcpdumpParams:
    image: str = param("issif/tcpdump:latest", doc="image of the ephemeral capture container", zero_is_default=True)
    duration: int = param(5, doc="seconds of capture; 0: 5", check=between(0), zero_is_default=True)
    snaplen: int = param(0, doc="bytes kept per packet (tcpdump -s); 0: whole packets", check=between(0))


class Tcpdump(Planned):
    spec: ClassVar[Spec[TcpdumpParams]] = Spec(
        name="kubernetes:tcpdump",
        kind="actionner",
        clients=("kube",),
        description=(
            "Capture the pod's traffic with tcpdump in an ephemeral container and store the pcap with the output; "
            "stops the rule's later actions by default"
        ),
        params=TcpdumpParams,
        needs_fields=("k8s.ns.name", "k8s.pod.name"),
        continues=False,
        output="required",
        grants=(
            Grant(("",), ("pods",), ("get",)),
            Grant(("",), ("pods/ephemeralcontainers",), ("patch",)),
            Grant(("",), ("pods/exec",), ("create",)),
        ),
        example="""\
- action: Capture the traffic
  actionner: kubernetes:tcpdump
  parameters:
    duration: 10
    snaplen: 512
  output:
    target: aws:s3
    parameters:
      bucket: falco-artifacts
      prefix: captures/
""",
    )
