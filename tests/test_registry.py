"""The plugin registry: Talon-compatible parameter decoding, defaults, generated docs and RBAC."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from talon_opa.actionners.kubernetes.label import Label
from talon_opa.catalog import default_registry
from talon_opa.notifiers.k8sevents import K8sEvents
from talon_opa.plugins import clients, docs, params, rbac, runtime
from talon_opa.plugins.params import ParamsInvalid
from talon_opa.plugins.registry import PluginDeclarationError, Registry
from talon_opa.plugins.spec import Spec

REGISTRY = default_registry()
ROOT = Path(__file__).resolve().parent.parent


def normalize(s: Spec[Any], raw: dict[str, Any]) -> dict[str, Any]:
    """The decoded parameters as JSON values, by the names users write."""
    decoded = s.decode(raw)
    return {params.key_of(f): json.loads(json.dumps(getattr(decoded, f.name))) for f in params.fields(s.params)}


def spec(name: str) -> Spec[Any]:
    found = REGISTRY.find(name)
    assert found is not None, name
    return found.spec


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        (
            "kubernetes:terminate",
            {"grace_period_seconds": 5, "min_healthy_replicas": "33%"},
            {"grace_period_seconds": 5},
        ),
        ("kubernetes:terminate", {"min_healthy_replicas": "2", "ignore_daemonsets": True}, {"ignore_daemonsets": True}),
        ("kubernetes:terminate", {"min_healthy_replicas": "100%"}, {"min_healthy_replicas": "100%"}),
        ("kubernetes:terminate", {"grace_period_seconds": 2.9}, {"grace_period_seconds": 2}),  # mapstructure truncates
        (
            "kubernetes:label",
            {"labels": {"suspicious": "true", "gone": None}},
            {"labels": {"suspicious": "true", "gone": ""}},
        ),
        ("kubernetes:label", {"labels": {"a": "b"}, "level": "node"}, {"level": "node"}),
        (
            "kubernetes:networkpolicy",
            {"allow_cidr": ["10.0.0.0/8", "10.1.2.3/16", "fd00::/8"]},
            {"allow_namespaces": None},
        ),
        ("calico:networkpolicy", {"order": 20, "allow_namespaces": ["kube-system"]}, {"order": 20}),
        ("kubernetes:exec", {"command": "ls"}, {"shell": "/bin/sh"}),
        ("kubernetes:exec", {"command": "ls", "shell": ""}, {"shell": "/bin/sh"}),  # "" is the default, as in Talon
        ("kubernetes:log", {"tail_lines": 0}, {"tail_lines": 20}),
        ("kubernetes:tcpdump", {"duration": 0, "snaplen": 0}, {"duration": 5, "snaplen": 0}),
        ("kubernetes:sysdig", {"duration": 30, "scope": "node", "buffer_size": 128}, {"scope": "node"}),
        ("kubernetes:sysdig", {"duration": 0, "buffer_size": 0}, {"duration": 5, "buffer_size": 2048}),
        (
            "kubernetes:drain",
            {"max_wait_period": 30, "wait_period_excluded_namespaces": ["a"]},
            {"ignore_errors": False},
        ),
        (
            "aws:lambda",
            {"aws_lambda_name": "f", "aws_lambda_invocation_type": "Event"},
            {"aws_lambda_alias_or_version": "$LATEST"},
        ),
        ("gcp:function", {"gcp_function_name": "f", "gcp_function_location": "eu"}, {"gcp_function_timeout": 0}),
        ("local:file", {"destination": "/does/not/exist/yet"}, {"destination": "/does/not/exist/yet"}),
        ("aws:s3", {"bucket": "b"}, {"prefix": "", "region": None}),
        (
            "elasticsearch",
            {"url": "http://es:9200", "number_of_shards": "5", "create_index_template": "false"},
            {"number_of_shards": 5, "create_index_template": False},
        ),  # notifier settings: converted from their text
        ("webhook", {"url": "https://x", "custom_headers": {"X-Retries": 3}}, {"custom_headers": {"X-Retries": "3"}}),
        ("smtp", {"host_port": "mail:25", "from": "a@b", "to": "c@d", "tls": True}, {"from": "a@b", "format": "html"}),
    ],
)
def test_decode_accepts_talon_valid_parameters(name: str, raw: dict[str, Any], expected: dict[str, Any]) -> None:
    normalized = normalize(spec(name), raw)
    assert {k: normalized[k] for k in expected} == expected
    assert set(normalized) == set(spec(name).defaults())


@pytest.mark.parametrize(
    ("name", "raw", "field", "words"),
    [
        ("kubernetes:label", {"labels": {"suspicious": True}}, "labels[suspicious]", 'suspicious: "true"'),
        ("kubernetes:label", {"labels": {}}, "labels", "at least one label"),
        ("kubernetes:label", {"level": "pod"}, "labels", "required"),
        ("kubernetes:annotation", {"annotations": {"a": 1}}, "annotations[a]", "quote"),
        ("kubernetes:terminate", {"min_healthy_replicas": 3}, "min_healthy_replicas", 'min_healthy_replicas: "3"'),
        ("kubernetes:terminate", {"grace_period_seconds": "5"}, "grace_period_seconds", "without quotes: 5"),
        ("kubernetes:terminate", {"grace_period_seconds": True}, "grace_period_seconds", "whole number"),
        ("kubernetes:terminate", {"ignore_daemonsets": "true"}, "ignore_daemonsets", "without quotes"),
        ("kubernetes:terminate", {"min_healthy_replicas": "101%"}, "min_healthy_replicas", "0 to 100"),
        ("kubernetes:terminate", {"min_healthy_replicas": "-1"}, "min_healthy_replicas", "negative"),
        ("kubernetes:drain", {"min_healthy_replicas": "half"}, "min_healthy_replicas", "percentage"),
        ("kubernetes:networkpolicy", {"allow_cidr": ["10.0.0.0/8", "10.0.0.1"]}, "allow_cidr[1]", "wrong CIDR"),
        ("kubernetes:networkpolicy", {"allow_cidr": "10.0.0.0/8"}, "allow_cidr", "list"),
        ("cilium:networkpolicy", {"allow_cidr": ["300.0.0.0/8"]}, "allow_cidr[0]", "CIDR"),
        ("calico:networkpolicy", {"order": "1"}, "order", "without quotes"),
        ("kubernetes:exec", {"shell": "/bin/bash"}, "command", "required"),
        ("kubernetes:exec", {"command": ""}, "command", "empty"),
        ("kubernetes:script", {}, "script", "'script' or 'file'"),
        ("kubernetes:script", {"script": "ls", "file": "/etc/hostname"}, "file", "same time"),
        ("kubernetes:script", {"file": "/no/such/script.sh"}, "file", "does not exist"),
        ("kubernetes:download", {}, "file", "required"),
        ("kubernetes:log", {"tail_lines": -1}, "tail_lines", ">= 0"),
        ("kubernetes:tcpdump", {"snaplen": -1}, "snaplen", ">= 0"),
        ("kubernetes:sysdig", {"scope": "cluster"}, "scope", "pod, node"),
        ("kubernetes:sysdig", {"duration": 31}, "duration", "1 to 30"),
        ("kubernetes:sysdig", {"buffer_size": 64}, "buffer_size", ">= 128"),
        (
            "aws:lambda",
            {"aws_lambda_name": "f", "aws_lambda_invocation_type": "Sync"},
            "aws_lambda_invocation_type",
            "Event",
        ),
        ("aws:lambda", {}, "aws_lambda_name", "required"),
        ("gcp:function", {"gcp_function_name": "f"}, "gcp_function_location", "required"),
        ("local:file", {}, "destination", "required"),
        ("aws:s3", {"prefix": "x/"}, "bucket", "required"),
        ("minio:s3", {"bucket": 3}, "bucket", "quote"),
        ("gcp:gcs", {"bucket": ""}, "bucket", "empty"),
        ("slack", {"webhook_url": "hooks.slack.com/x"}, "webhook_url", "http"),
        ("webhook", {}, "url", "required"),
        ("loki", {"url": ""}, "url", "empty"),
        ("elasticsearch", {"url": "http://es", "suffix": "weekly"}, "suffix", "daily"),
        ("elasticsearch", {"url": "http://es", "number_of_shards": "three"}, "number_of_shards", "whole number"),
        ("smtp", {"host_port": "mail:25", "to": "x"}, "from", "required"),
        ("smtp", {"host_port": "mail:25", "from": "a", "to": "b", "format": "markdown"}, "format", "html, text"),
    ],
)
def test_decode_rejects_talon_invalid_parameters(name: str, raw: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ParamsInvalid) as e:
        spec(name).decode(raw)
    problems = {p.field: f"{p.message} ({p.hint})" for p in e.value.problems}
    assert field in problems, problems
    assert words in problems[field]
    assert all(p.hint for p in e.value.problems)


def test_decode_reports_every_problem_at_once() -> None:
    raw = {"grace_period_seconds": "5", "min_healthy_replicas": 3, "ignore_daemonsets": "yes"}
    with pytest.raises(ParamsInvalid) as e:
        spec("kubernetes:terminate").decode(raw)
    assert sorted(p.field for p in e.value.problems) == sorted(raw)


def test_keys_match_case_insensitively_exact_first_and_unknown_keys_are_reported() -> None:
    terminate = spec("kubernetes:terminate")
    assert normalize(terminate, {"Grace_Period_Seconds": 5})["grace_period_seconds"] == 5
    raw = {"GRACE_PERIOD_SECONDS": 2, "grace_period_seconds": 1, "ignoreDaemonsets": True, "gracePeriods": 3}
    assert normalize(terminate, raw)["grace_period_seconds"] == 1
    assert normalize(terminate, raw)["ignore_daemonsets"] is False  # the docs' spelling is not a parameter
    assert terminate.unknown_keys(raw) == ["GRACE_PERIOD_SECONDS", "ignoreDaemonsets", "gracePeriods"]
    with pytest.raises(ParamsInvalid) as e:
        terminate.decode({"Grace_Period_Seconds": "5"})
    assert e.value.problems[0].field == "Grace_Period_Seconds"  # as written, so the loader can point at it


@pytest.mark.parametrize(
    ("name", "key", "default"),
    [
        ("kubernetes:networkpolicy", "allow_cidr", None),  # Talon displays 0.0.0.0/0; none = deny all egress
        ("kubernetes:terminate", "ignore_standalone_pods", False),  # Talon displays true
        ("kubernetes:terminate", "grace_period_seconds", 0),
        ("kubernetes:label", "level", "pod"),
        ("kubernetes:log", "tail_lines", 20),
        ("kubernetes:tcpdump", "duration", 5),
        ("kubernetes:tcpdump", "snaplen", 0),  # Talon displays 4096
        ("kubernetes:sysdig", "buffer_size", 2048),
        ("aws:lambda", "aws_lambda_invocation_type", "RequestResponse"),
        ("elasticsearch", "suffix", "daily"),
        ("slack", "username", "Falco Talon"),
        ("smtp", "format", "html"),
        ("webhook", "custom_headers", {}),
    ],
)
def test_defaults_are_talons_effective_ones(name: str, key: str, default: Any) -> None:
    assert spec(name).defaults()[key] == default


def _example_params(s: Spec[Any]) -> dict[str, Any]:
    doc = yaml.safe_load(s.example)
    if s.kind == "notifier":
        return dict((doc.get("notifiers") or {}).get(s.name) or {})
    action = doc[0]
    if s.kind == "actionner":
        assert action["actionner"] == s.name
        return dict(action.get("parameters") or {})
    assert action["output"]["target"] == s.name
    return dict(action["output"]["parameters"])


def _plugins(registry: Registry) -> list[type[Any]]:
    return [*registry.actionners.values(), *registry.outputs.values(), *registry.notifiers.values()]


def test_every_plugin_declares_a_spec_docs_entry_capability_and_an_example_that_decodes() -> None:
    markdown = docs.markdown(REGISTRY)
    for plugin in _plugins(REGISTRY):
        s = plugin.spec
        assert s.description, s.name
        assert s.example, s.name
        s.decode(_example_params(s))
        assert not s.unknown_keys(_example_params(s)), s.name
        assert runtime.runs(plugin) != issubclass(plugin, runtime.Planned), s.name
        assert f"### `{s.name}`" in markdown, s.name
        assert f"--- {s.name} ---" in docs.render_list(REGISTRY, s.kind), s.name
        assert set(s.clients) <= set(clients.KINDS), s.name


def test_talons_plugins_are_listed_in_talons_order() -> None:
    def in_order(names: list[str], talons: list[str]) -> bool:
        return [n for n in names if n in talons] == talons

    assert in_order(list(REGISTRY.outputs), ["local:file", "minio:s3", "aws:s3", "gcp:gcs"])
    assert in_order(list(REGISTRY.notifiers), ["k8sevents", "slack", "smtp", "webhook", "loki", "elasticsearch"])
    assert in_order(list(REGISTRY.actionners), ["kubernetes:terminate", "kubernetes:label", "kubernetes:networkpolicy"])


@dataclass(frozen=True, kw_only=True, slots=True)
class _P:
    pass


def _spec(name: str, kind: Any = "actionner", **more: Any) -> Spec[_P]:
    return Spec(name=name, kind=kind, description="d", params=_P, **more)


class _NoSpec(runtime.Planned):
    pass


class _NoCapability:
    spec = _spec("t:none")


class _Both(runtime.Planned, runtime.Actionner[_P]):
    spec = _spec("t:both")

    async def run(self, alert: Any, params: _P) -> runtime.Outcome:
        raise AssertionError


class _WrongKind(runtime.Output[_P]):
    spec = _spec("t:wrong")

    async def store(self, artifact: runtime.Artifact, params: _P) -> runtime.Outcome:
        raise AssertionError


class _UnknownClient(runtime.Planned):
    spec = _spec("t:client", clients=("ftp",))


@pytest.mark.parametrize(
    ("plugin", "words"),
    [
        (_NoSpec, "has no `spec`"),
        (_NoCapability, "exactly one of Actionner (it runs) or Planned"),
        (_Both, "exactly one of Actionner (it runs) or Planned"),
        (_WrongKind, "must subclass Actionner"),
        (_UnknownClient, "unknown clients ['ftp']"),
    ],
)
def test_the_registry_refuses_a_plugin_that_does_not_declare_what_it_is(plugin: type[Any], words: str) -> None:
    with pytest.raises(PluginDeclarationError) as e:
        Registry.of(plugin)
    assert words in str(e.value)


class _Runs(runtime.Actionner[_P]):
    spec = _spec("t:runs", example="x")

    async def run(self, alert: Any, params: _P) -> runtime.Outcome:
        return runtime.Outcome.done("ran")


class _Later(runtime.Planned):
    spec = _spec("t:later", example="x")


def test_cannot_run_marks_show_until_every_plugin_runs_then_disappear() -> None:
    mixed = Registry.of(_Runs, _Later)
    listed = docs.render_list(mixed, "actionner")
    assert "can_run: true" in listed
    assert "can_run: false" in listed
    assert "**Cannot run in this version yet**" in docs.markdown(mixed)
    assert (mixed.runs("t:runs"), mixed.runs("t:later"), mixed.all_run()) == (True, False, False)
    complete = Registry.of(_Runs)
    assert complete.all_run()
    assert "can_run" not in docs.render_list(complete, "actionner")
    text = docs.markdown(complete)
    assert "not yet" not in text
    assert "Cannot run" not in text


@pytest.mark.parametrize(
    ("name", "continues", "output", "fields"),
    [
        ("kubernetes:terminate", False, "none", ("k8s.ns.name", "k8s.pod.name")),
        ("kubernetes:delete", False, "none", ("ka.target.resource", "ka.target.name")),
        ("kubernetes:log", True, "optional", ("k8s.ns.name", "k8s.pod.name")),
        ("kubernetes:download", True, "required", ("k8s.ns.name", "k8s.pod.name")),
        ("kubernetes:tcpdump", False, "required", ("k8s.ns.name", "k8s.pod.name")),
        ("kubernetes:sysdig", False, "required", ("k8s.ns.name", "k8s.pod.name")),
        ("calico:networkpolicy", True, "none", ("k8s.ns.name", "k8s.pod.name", "fd.sip|fd.rip")),
        ("aws:lambda", True, "none", ()),
    ],
)
def test_actionner_metadata(name: str, continues: bool, output: str, fields: tuple[str, ...]) -> None:
    s = spec(name)
    assert (s.continues, s.output, s.needs_fields) == (continues, output, fields)


def _rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }


def test_cluster_role_merges_grants_and_is_least_privilege() -> None:
    uses: list[rbac.Use] = [
        "kubernetes:terminate",
        ("kubernetes:label", {"labels": {"suspicious": "true"}}),  # pod level: no rights on nodes
        "calico:networkpolicy",
        "aws:s3",
        "k8sevents",
    ]
    role = rbac.cluster_role(REGISTRY, uses, "talon")
    assert role["apiVersion"] == "rbac.authorization.k8s.io/v1"
    assert role["kind"] == "ClusterRole"
    assert role["metadata"] == {"name": "talon"}
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete", "get", "patch"]},
        {"apiGroups": ["apps"], "resources": ["daemonsets", "replicasets", "statefulsets"], "verbs": ["get"]},
        {
            "apiGroups": ["projectcalico.org"],
            "resources": ["networkpolicies"],
            "verbs": ["create", "delete", "get", "update"],
        },
    ]
    # deterministic, whatever the order of the uses
    assert rbac.cluster_role(REGISTRY, reversed(uses), "talon") == role


@pytest.mark.parametrize(
    ("uses", "present", "absent"),
    [
        (
            [("kubernetes:label", {"labels": {"a": "b"}, "level": "node"})],
            ("", "nodes", "patch"),
            ("", "pods", "patch"),
        ),
        (["kubernetes:exec"], ("", "pods/exec", "create"), ("", "pods", "delete")),
        (["kubernetes:log"], ("", "pods/log", "get"), ("", "pods/exec", "create")),
        (["kubernetes:drain"], ("", "pods/eviction", "create"), ("", "pods", "delete")),
        (["kubernetes:cordon"], ("", "nodes", "patch"), ("", "pods", "delete")),
        (["cilium:networkpolicy"], ("cilium.io", "ciliumnetworkpolicies", "update"), ("", "pods", "list")),
        (["kubernetes:delete"], ("rbac.authorization.k8s.io", "clusterroles", "delete"), ("", "pods", "delete")),
        (["kubernetes:sysdig"], ("batch", "jobs", "create"), ("batch", "jobs", "delete")),
        (["kubernetes:tcpdump"], ("", "pods/ephemeralcontainers", "patch"), ("", "pods", "delete")),
    ],
)
def test_cluster_role_grants_what_each_plugin_needs_and_no_more(
    uses: list[rbac.Use], present: tuple[str, str, str], absent: tuple[str, str, str]
) -> None:
    rules = _rules(rbac.cluster_role(REGISTRY, uses, "t"))
    assert present in rules
    assert absent not in rules
    assert not any(r == "caliconetworkpolicies" or "*" in (g, r, v) for g, r, v in rules)


def test_a_registry_is_a_value_tests_can_build() -> None:
    small = Registry.of(Label, K8sEvents)
    assert small.actionner("kubernetes:label") is Label.spec
    assert small.actionner("kubernetes:terminate") is None
    assert small.notifier("k8sevents") is K8sEvents.spec
    assert "--- kubernetes:label ---" in docs.render_list(small, "actionner")
    with pytest.raises(ValueError, match="two actionners"):
        Registry.of(Label, Label)


def test_the_shipped_registry_imports_a_plugin_when_it_is_first_looked_up() -> None:
    """In a fresh interpreter: listing names imports no plugin; a spec imports that plugin's module only."""
    probe = """
import sys
from talon_opa.catalog import default_registry
kinds = (["actionners"], ["outputs"], ["notifiers"])
plugin_modules = lambda: sorted(m for m in sys.modules if m.split(".")[1:2] in kinds)
r = default_registry()
names = list(r.actionners) + list(r.outputs) + list(r.notifiers)
print(len(names), plugin_modules())
print(r.actionner("kubernetes:label").name, r.actionner("kubernetes:nope"), plugin_modules())
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    first, second = out.splitlines()
    assert first == f"{len(_plugins(REGISTRY))} []"
    assert second.startswith("kubernetes:label None [")
    assert "'talon_opa.actionners.kubernetes.label'" in second
    assert "terminate" not in second
    assert "notifiers" not in second
    assert "outputs" not in second


def test_a_shipped_line_must_name_the_plugin_its_class_declares() -> None:
    wrong = Registry.shipped(
        ("actionner", "kubernetes:label", "talon_opa.actionners.kubernetes.label:Label"),
        ("actionner", "kubernetes:tag", "talon_opa.actionners.kubernetes.label:Label"),
        ("output", "kubernetes:label", "talon_opa.actionners.kubernetes.label:Label"),
    )
    assert wrong.actionner("kubernetes:label") is Label.spec
    assert wrong.actionners.origin("kubernetes:tag") == "talon_opa.actionners.kubernetes.label:Label"
    with pytest.raises(
        PluginDeclarationError,
        match="declares the actionner 'kubernetes:label': the registry files it as the actionner 'kubernetes:tag'",
    ):
        wrong.actionner("kubernetes:tag")
    with pytest.raises(PluginDeclarationError, match="as the output 'kubernetes:label'"):
        wrong.output("kubernetes:label")
    with pytest.raises(ValueError, match="two notifiers"):
        Registry.shipped(("notifier", "slack", "a:B"), ("notifier", "slack", "c:D"))


def test_actionners_list_has_talons_shape() -> None:
    text = docs.render_list(REGISTRY, "actionner")
    blocks = text.split("--- ")[1:]
    assert [b.split(" ---", 1)[0] for b in blocks] == list(REGISTRY.actionners)
    label = yaml.safe_load(blocks[1].split("---\n", 1)[1])
    assert label["parameters"] == {"labels (required)": None, "level": "pod"}
    assert (label["name"], label["category"], label["continue"]) == ("label", "kubernetes", True)
    assert label["required_output_fields"] == ["k8s.ns.name", "k8s.pod.name"]
    assert (label["allow_output"], label["require_output"]) == (False, False)
    assert {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "patch"]} in label["permissions"]


def test_docs_actionners_md_is_generated_from_the_registry() -> None:
    committed = (ROOT / "docs" / "actionners.md").read_text(encoding="utf-8")
    assert committed == docs.markdown(REGISTRY), "run: .venv/bin/python -m talon_opa.cli.lists docs/actionners.md"


def test_rbac_command_prints_the_cluster_role_of_the_rules_in_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from talon_opa.cli import main as cli

    rules = tmp_path / "rules.yaml"
    rules.write_text(
        """\
- action: Label the node
  actionner: kubernetes:label
  parameters:
    level: node
    labels:
      quarantine: "true"

- rule: Shell in a container
  match:
    rules: [Terminal shell in container]
  notifiers: [k8sevents]
  actions:
    - action: Label the node
    - action: Keep the logs
      actionner: kubernetes:log
      output:
        target: local:file
        parameters:
          destination: /tmp
""",
        encoding="utf-8",
    )
    assert cli.main(["rbac", "-r", str(rules), "--name", "responder"]) == 0
    role = yaml.safe_load(capsys.readouterr().out)
    assert role["metadata"] == {"name": "responder"}
    assert _rules(role) == {
        ("", "events", "create"),
        ("", "namespaces", "get"),
        ("", "nodes", "get"),
        ("", "nodes", "patch"),
        ("", "pods", "get"),
        ("", "pods/log", "get"),
    }
