"""Pure builders of the kubernetes actionners and notifiers: tables of inputs and exact outputs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from talon_opa.actionners.kubernetes import _pods
from talon_opa.actionners.kubernetes.label import patch_ops, pointer
from talon_opa.actionners.kubernetes.networkpolicy import policy_object
from talon_opa.actionners.kubernetes.terminate import required_ready
from talon_opa.notifiers import k8sevents, webhook
from talon_opa.plugins.notes import Note


@pytest.mark.parametrize(
    ("key", "token"),
    [("app", "app"), ("security.falco.org/suspicious", "security.falco.org~1suspicious"), ("a~b/c", "a~0b~1c")],
)
def test_pointer_escapes_tilde_then_slash(key: str, token: str) -> None:
    assert pointer(key) == token


def _obj(labels: dict[str, str] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"resourceVersion": "7"}
    if labels is not None:
        meta["labels"] = labels
    return {"metadata": meta}


TEST_RV = {"op": "test", "path": "/metadata/resourceVersion", "value": "7"}


@pytest.mark.parametrize(
    ("labels", "wanted", "ops"),
    [
        ({"a": "1"}, {"a": "1"}, []),  # already so: no write
        ({"a": "1"}, {"b": ""}, []),  # removing an absent key: nothing to do
        (None, {"b": ""}, []),
        ({"a": "1"}, {"a": "2"}, [TEST_RV, {"op": "add", "path": "/metadata/labels/a", "value": "2"}]),
        ({"a": "1"}, {"a": ""}, [TEST_RV, {"op": "remove", "path": "/metadata/labels/a"}]),
        (
            None,
            {"x.io/y": "1"},
            [
                TEST_RV,
                {"op": "add", "path": "/metadata/labels", "value": {}},
                {"op": "add", "path": "/metadata/labels/x.io~1y", "value": "1"},
            ],
        ),
    ],
)
def test_patch_ops(labels: dict[str, str] | None, wanted: dict[str, str], ops: list[dict[str, Any]]) -> None:
    assert patch_ops(_obj(labels), "labels", wanted) == ops


@pytest.mark.parametrize(
    ("threshold", "desired", "needed"),
    [("0", 5, 0), ("2", 5, 2), ("50%", 4, 2), ("50%", 3, 2), ("60%", 4, 3), ("100%", 3, 3), ("0%", 3, 0), ("1%", 1, 1)],
)
def test_required_ready_rounds_percentages_up(threshold: str, desired: int, needed: int) -> None:
    assert required_ready(threshold, desired) == needed


@pytest.mark.parametrize(
    ("pod", "kind"),
    [
        ({"metadata": {}}, "StandalonePod"),
        ({"metadata": {"ownerReferences": []}}, "StandalonePod"),
        ({"metadata": {"ownerReferences": [{"kind": "DaemonSet", "name": "d"}, {"kind": "Job"}]}}, "DaemonSet"),
    ],
)
def test_pod_kind_is_the_first_owner(pod: dict[str, Any], kind: str) -> None:
    assert _pods.pod_kind(pod) == kind


def test_selector_labels_drop_revision_labels() -> None:
    labels = {"app": "web", "pod-template-hash": "1", "pod-template-generation": "2", "controller-revision-hash": "3"}
    assert _pods.selector_labels(labels) == {"app": "web"}


def test_policy_without_allowed_peers_has_no_egress_rule() -> None:
    policy = policy_object("web-1", "ns", {"app": "web"}, None, (), "kubernetes:networkpolicy")
    assert policy["spec"] == {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"]}
    assert policy["metadata"]["labels"] == {"app": "web", "app.k8s.io/managed-by": "falco-talon"}


NOTE = Note(
    stage="action",
    status="ignored",
    rule="r",
    action="a",
    actionner="kubernetes:terminate",
    objects={"pod": "p", "namespace": "n"},
    output="it's ignored\r\nreally",
    trace_id="t",
)


def test_k8sevents_message_template() -> None:
    assert k8sevents.message(NOTE) == (
        "Status: ignored\nMessage: action\nRule: r\nAction: a\nActionner: kubernetes:terminate\n"
        'Namespace: n\nPod: p\nOutput: it"s ignored\nreally\nTraceID: t\n'
    )


def test_k8sevents_event_names_the_output_target_at_the_output_stage() -> None:
    note = Note(
        stage="output", status="success", rule="", action="a", actionner="kubernetes:log", output_target="aws:s3"
    )
    event = k8sevents.event(note, "default", None, dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC))
    assert event["reason"] == "falco-talon:output:aws:s3:success"
    assert event["action"] == "aws:s3"
    assert event["eventTime"] == "2026-01-02T03:04:05.000006Z"
    assert event["involvedObject"] == {"kind": "Pod", "namespace": "default", "name": ""}


def test_webhook_body_leaves_empty_fields_out() -> None:
    assert webhook.body(NOTE) == {
        "objects": {"Pod": "p", "Namespace": "n"},
        "trace_id": "t",
        "rule": "r",
        "message": "action",
        "output": "it's ignored\r\nreally",
        "category": "kubernetes",
        "actionner": "kubernetes:terminate",
        "action": "a",
        "status": "ignored",
    }
