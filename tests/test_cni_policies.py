"""Pure builders of calico:networkpolicy and cilium:networkpolicy: tables of inputs and exact outputs."""

from __future__ import annotations

from typing import Any

import pytest

from talon_opa.actionners.calico import networkpolicy as calico
from talon_opa.actionners.cilium import networkpolicy as cilium
from talon_opa.actionners.kubernetes.networkpolicy import NetworkPolicyParams, remote_cidr
from talon_opa.core.errors import StepFailed
from talon_opa.core.events import Alert

DENY = {"action": "Deny", "destination": {"nets": ["1.2.3.4/32"]}}
ALLOW_ALL = {"action": "Allow", "destination": {"nets": ["0.0.0.0/0"]}}


@pytest.mark.parametrize(
    ("fields", "cidr"),
    [
        ({"fd.rip": "1.2.3.4"}, "1.2.3.4/32"),
        ({"fd.sip": "1.2.3.4"}, "1.2.3.4/32"),
        ({"fd.rip": "1.2.3.4", "fd.sip": "5.6.7.8"}, "1.2.3.4/32"),  # Talon's order: fd.rip first
        ({"fd.rip": "", "fd.sip": "5.6.7.8"}, "5.6.7.8/32"),
        ({"fd.rip": "2001:DB8::1"}, "2001:db8::1/128"),  # IPv6 is one address too (Talon wrote /32)
    ],
)
def test_remote_cidr_is_the_one_address_of_the_remote_ip(fields: dict[str, Any], cidr: str) -> None:
    assert remote_cidr(Alert(output_fields=fields)) == cidr


@pytest.mark.parametrize(
    ("fields", "message"),
    [({}, "the alert names no remote IP"), ({"fd.rip": "10.0.0.0/8"}, "is not an IP address")],
)
def test_remote_cidr_refuses_what_is_not_one_ip(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(StepFailed, match=message):
        remote_cidr(Alert(output_fields=fields))


def test_calico_selectors_sort_keys_and_quote_values() -> None:
    assert calico.selector({"tier": "api", "app": "web"}) == 'app == "web" && tier == "api"'
    assert calico.namespace_selector(["a", "b"]) == "kubernetes.io/metadata.name in { 'a', 'b' }"


@pytest.mark.parametrize(
    ("cidrs", "namespaces", "rules"),
    [
        (None, None, [DENY, ALLOW_ALL]),  # nothing said: only the remote IP is cut
        ([], None, [DENY]),  # an empty list is not an absent one: deny all egress
        (["10.0.0.0/8"], None, [DENY, {"action": "Allow", "destination": {"nets": ["10.0.0.0/8"]}}]),
        (  # Calico refuses a rule mixing IPv4 and IPv6 nets: one rule per family
            ["fd00::/8", "10.0.0.0/8", "172.16.0.0/12"],
            None,
            [
                DENY,
                {"action": "Allow", "destination": {"nets": ["10.0.0.0/8", "172.16.0.0/12"]}},
                {"action": "Allow", "destination": {"nets": ["fd00::/8"]}},
            ],
        ),
        (
            None,
            ["dns"],
            [
                DENY,
                {"action": "Allow", "destination": {"namespaceSelector": "kubernetes.io/metadata.name in { 'dns' }"}},
            ],
        ),
    ],
)
def test_calico_egress_rules(
    cidrs: list[str] | None, namespaces: list[str] | None, rules: list[dict[str, Any]]
) -> None:
    params = NetworkPolicyParams(
        allow_cidr=None if cidrs is None else tuple(cidrs),
        allow_namespaces=None if namespaces is None else tuple(namespaces),
    )
    assert calico.egress_rules(["1.2.3.4/32"], params) == rules


def test_calico_accumulate_unions_denied_ips_keeps_calico_labels_and_follows_the_allow_parameters() -> None:
    existing = {
        "metadata": {"labels": {"app": "web", "projectcalico.org/tier": "default", "stale": "x"}},
        "spec": {
            "egress": [
                {"action": "Deny", "destination": {"nets": ["9.9.9.9/32", "1.2.3.4/32"]}},
                {"action": "Allow", "destination": {"nets": ["10.0.0.0/8"]}},
            ]
        },
    }
    wanted = calico.policy(
        "web-1",
        "ns",
        {"app": "web"},
        ["1.2.3.4/32", "5.5.5.5/32", "2001:db8::1/128"],
        calico.CalicoNetworkPolicyParams(),
    )

    merged = calico.accumulate(existing, wanted)

    assert merged["spec"]["egress"] == [
        {"action": "Deny", "destination": {"nets": ["9.9.9.9/32", "1.2.3.4/32", "5.5.5.5/32"]}},
        {"action": "Deny", "destination": {"nets": ["2001:db8::1/128"]}},
        ALLOW_ALL,
    ]
    assert merged["metadata"]["labels"] == {
        "app": "web",
        "app.k8s.io/managed-by": "falco-talon",
        "projectcalico.org/tier": "default",
    }
    assert wanted["spec"]["egress"][0]["destination"]["nets"] == ["1.2.3.4/32", "5.5.5.5/32"]  # not changed
    # the IPv6 deny rule of an existing policy counts too
    assert calico.denied_nets(merged) == ["9.9.9.9/32", "1.2.3.4/32", "5.5.5.5/32", "2001:db8::1/128"]


@pytest.mark.parametrize(
    ("cidrs", "namespaces", "rules"),
    [
        (None, None, [{"toCIDR": ["0.0.0.0/0"]}]),
        ([], [], []),
        (
            None,
            ["dns"],  # kept without allow_cidr (Talon dropped it)
            [
                {
                    "toEndpoints": [
                        {
                            "matchExpressions": [
                                {"key": "k8s:io.kubernetes.pod.namespace", "operator": "In", "values": ["dns"]}
                            ]
                        }
                    ]
                }
            ],
        ),
    ],
)
def test_cilium_allow_rules(cidrs: list[str] | None, namespaces: list[str] | None, rules: list[dict[str, Any]]) -> None:
    params = NetworkPolicyParams(
        allow_cidr=None if cidrs is None else tuple(cidrs),
        allow_namespaces=None if namespaces is None else tuple(namespaces),
    )
    assert cilium.allow_rules(params) == rules


def test_cilium_without_allow_rules_has_no_egress_key() -> None:
    spec = cilium.policy("web-1", "ns", {"app": "web"}, "1.2.3.4/32", NetworkPolicyParams(allow_cidr=()))["spec"]
    assert spec == {
        "description": "Network policy created by Falco Talon",
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "egressDeny": [{"toCIDR": ["1.2.3.4/32"]}],
    }


@pytest.mark.parametrize(
    ("old_deny", "old_egress", "deny", "egress"),
    [
        # into an empty policy the rules are added (Talon added nothing when a list was empty)
        ([], [], [{"toCIDR": ["1.2.3.4/32"]}], [{"toCIDR": ["0.0.0.0/0"]}]),
        # present once: not added again (Talon appended a copy per differing rule)
        (
            [{"toCIDR": ["9.9.9.9/32"]}, {"toCIDR": ["8.8.8.8/32"]}],
            [{"toCIDR": ["0.0.0.0/0"]}],
            [{"toCIDR": ["9.9.9.9/32"]}, {"toCIDR": ["8.8.8.8/32"]}, {"toCIDR": ["1.2.3.4/32"]}],
            [{"toCIDR": ["0.0.0.0/0"]}],
        ),
    ],
)
def test_cilium_accumulate_adds_each_new_rule_once(
    old_deny: list[Any], old_egress: list[Any], deny: list[Any], egress: list[Any]
) -> None:
    existing = {"spec": {"egressDeny": old_deny, "egress": old_egress}}
    wanted = cilium.policy("web-1", "ns", {"app": "web"}, "1.2.3.4/32", NetworkPolicyParams())

    merged = cilium.accumulate(existing, wanted)

    assert merged["spec"]["egressDeny"] == deny
    assert merged["spec"]["egress"] == egress
    assert merged["metadata"] == wanted["metadata"]
