"""The Helm chart (charts/talon-opa), rendered by the real `helm`: lint, default and non-default values,
the config the engine will read, least privilege, and monitoring that names real metrics.
(tests/e2e/test_chart_cluster.py applies the rendered objects to a real API server.)"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from talon_opa.catalog import default_registry
from talon_opa.cli.lists import uses_of
from talon_opa.core import config
from talon_opa.engine.app import BUNDLE_PATH
from talon_opa.engine.metrics import Metrics
from talon_opa.plugins import rbac
from talon_opa.translator import rules as rules_loader
from tests.harness import helm

OWN_RULES = """\
- action: Label it
  actionner: kubernetes:label
  parameters:
    labels: {suspicious: "true"}
- rule: Shell
  match: {rules: [Terminal shell in container]}
  actions:
    - action: Label it
"""
MORE_RULES = """\
- rule: Shell later
  match: {rules: [Terminal shell in container], priority: ">=Notice"}
  actions:
    - action: Label it
"""
NON_DEFAULT: dict[str, Any] = {
    "opa": {"mode": "child"},
    "auth": {"existingSecret": "my-token", "existingSecretKey": "intake", "header": "X-Talon-Token"},
    "operator": {"existingSecret": "my-token", "existingSecretKey": "operator"},
    "rules": {"files": {"10-more.yaml": MORE_RULES, "00-base.yaml": OWN_RULES}},
    "rbac": {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]},
    "config": {
        "queue": {"workers": 4, "capacity": 500},
        "deduplication": {"key": ["rule", "k8s.pod.name"]},
        "opa": {"cache_dir": ""},  # the bundle cache turned off
    },
    "service": {"port": 2900},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "podDisruptionBudget": {"minAvailable": 1},
    "networkPolicy": {"egress": {"apiServer": {"cidrs": ["10.0.0.1/32"]}}},
    "replicaCount": 2,
}
# the features that keep state: caps (with the pod lookup), undo TTLs, approvals, an audit trail shipped
STATE_VALUES = helm.CHART / "examples" / "state-values.yaml"
FEATURES: dict[str, Any] = yaml.safe_load(STATE_VALUES.read_text())
POD_LOOKUP = [
    {"apiGroups": [""], "resources": ["pods", "replicationcontrollers"], "verbs": ["get"]},
    {"apiGroups": ["apps"], "resources": ["replicasets", "statefulsets", "daemonsets"], "verbs": ["get"]},
]


def load_config(rendered: helm.Rendered, tmp_path: Path, env: dict[str, str] | None = None) -> config.Config:
    """The rendered config.yaml, read by the engine's own loader (which rejects bad values)."""
    path = tmp_path / "config.yaml"
    path.write_text(rendered.config_yaml())
    return config.load(path, env=env or {})


def test_chart_passes_helm_lint_with_default_and_non_default_values() -> None:
    for values in ({}, NON_DEFAULT, FEATURES):
        done = helm.lint(values)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 chart(s) failed" in done.stdout


def test_default_render_runs_the_engine_with_an_opa_sidecar(tmp_path: Path) -> None:
    r = helm.template()
    assert sorted(r.kinds()) == sorted(
        [
            "ServiceAccount",
            "Secret",
            "Secret",
            "ConfigMap",
            "ConfigMap",
            "ConfigMap",
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",
            "Deployment",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ]
    )
    engine, opa = r.containers()["engine"], r.containers()["opa"]
    # OPA is a native sidecar: started before the engine, stopped after it (alerts drained on SIGTERM
    # are still decided)
    pod = r.deployment()["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["engine"]
    assert [(c["name"], c["restartPolicy"]) for c in pod["initContainers"]] == [("opa", "Always")]
    assert engine["args"] == ["server", "-c", "/etc/talon-opa/config/config.yaml"]
    cfg = load_config(r, tmp_path, env={"AUTH_TOKEN": "t0ken", "AUTH_OPERATOR_TOKEN": "0perator"})
    assert cfg.unknown_keys == ()
    assert cfg.auth.operator_token == "0perator"
    assert cfg.state_dir == "/var/lib/talon-opa"
    assert (cfg.caps, cfg.undo, cfg.approvals, cfg.audit.path) == ({}, {}, {}, "")  # off unless configured
    assert (cfg.address, cfg.listen_port) == ("0.0.0.0", 2803)
    assert cfg.auth.token == "t0ken"
    assert cfg.opa.url == "unix:///var/run/talon-opa/opa.sock"
    assert cfg.opa.bundle_dir == "/var/cache/talon-opa/bundles"
    # the bundle cache: in the same emptyDir, beside (not in) the bundle folder; a restarted container uses it
    assert cfg.opa.cache_dir == "/var/cache/talon-opa/bundle-cache"
    (mount,) = [m for m in engine["volumeMounts"] if cfg.opa.cache_dir.startswith(m["mountPath"] + "/")]
    assert not mount.get("readOnly")
    assert cfg.rules_files == ("/etc/talon-opa/rules/rules.yaml",)
    assert cfg.watch_rules
    # the intake token: a Secret, to the engine (AUTH_TOKEN) and to the sidecar (for the bundle endpoint)
    secret = r.one("Secret", "-auth")
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) == 40
    assert token not in json.dumps(r.objects).replace(secret["data"]["token"], "")
    for c in (engine, opa):
        (env,) = [e for e in c["env"] if e["name"] == "AUTH_TOKEN"]
        assert env["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "token"}
    # the operator API's token: a Secret of its own, to the engine only (never to the sidecar OPA)
    operator = r.one("Secret", "-operator")
    operator_token = base64.b64decode(operator["data"]["token"]).decode()
    assert len(operator_token) == 40
    assert operator_token != token
    assert operator_token not in json.dumps(r.objects).replace(operator["data"]["token"], "")
    (env,) = [e for e in engine["env"] if e["name"] == "AUTH_OPERATOR_TOKEN"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "talon-talon-opa-operator", "key": "token"}
    assert all(e["name"] != "AUTH_OPERATOR_TOKEN" for e in opa["env"])
    # state_dir: an emptyDir unless the config keeps state that must outlive the pod
    assert "PersistentVolumeClaim" not in r.kinds()
    assert r.deployment()["spec"]["strategy"]["type"] == "RollingUpdate"
    assert {"name": "state", "mountPath": "/var/lib/talon-opa"} in engine["volumeMounts"]
    assert {"name": "state", "emptyDir": {"sizeLimit": "256Mi"}} in pod["volumes"]
    # the sidecar decides on a unix socket shared with the engine only, and polls the engine's bundle
    assert "--addr=unix:///var/run/talon-opa/opa.sock" in opa["args"]
    opa_cfg = yaml.safe_load(r.one("ConfigMap", "-config")["data"]["opa.yaml"])
    assert opa_cfg["services"]["engine"] == {
        "url": "http://127.0.0.1:2803",
        "credentials": {"bearer": {"token": "${AUTH_TOKEN}"}},
    }
    assert opa_cfg["bundles"]["talon"]["resource"] == BUNDLE_PATH
    # the rules ConfigMap holds the chart's default rules, mounted as a folder (no subPath: watched)
    rules_cm = r.one("ConfigMap", "-rules")
    assert rules_cm["data"] == {"rules.yaml": (helm.CHART / "rules" / "rules.yaml").read_text()}
    assert all("subPath" not in m for c in (engine, opa) for m in c["volumeMounts"])
    # the service: intake on 2803 and OPA's diagnostic port
    assert [(p["name"], p["port"]) for p in r.one("Service")["spec"]["ports"]] == [("http", 2803), ("opa-diag", 8282)]


def test_pods_run_non_root_read_only_without_capabilities_and_only_the_engine_has_a_token() -> None:
    for values in ({}, NON_DEFAULT, FEATURES):
        r = helm.template(values)
        pod = r.deployment()["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert r.one("ServiceAccount")["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in r.containers().values():
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
            assert all(
                {"emptyDir", "persistentVolumeClaim"} & set(volumes[m["name"]])
                for m in c["volumeMounts"]
                if m["mountPath"] in writable
            )
            assert "/tmp" in writable
            has_token = any(m["name"] == "kube-api-access" for m in c["volumeMounts"])
            assert has_token == (c["name"] == "engine")
        sources = volumes["kube-api-access"]["projected"]["sources"]
        assert sources[0]["serviceAccountToken"]["path"] == "token"


def test_non_default_values_child_opa_own_token_secret_and_rules_files_in_name_order(tmp_path: Path) -> None:
    r = helm.template(NON_DEFAULT)
    assert "Secret" not in r.kinds()  # both tokens are in the user's Secret
    assert set(r.containers()) == {"engine"}  # child OPA: no sidecar
    assert "initContainers" not in r.deployment()["spec"]["template"]["spec"]
    assert r.deployment()["spec"]["replicas"] == 2
    (env,) = [e for e in r.containers()["engine"]["env"] if e["name"] == "AUTH_TOKEN"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "my-token", "key": "intake"}
    (env,) = [e for e in r.containers()["engine"]["env"] if e["name"] == "AUTH_OPERATOR_TOKEN"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "my-token", "key": "operator"}
    cfg = load_config(r, tmp_path)
    assert cfg.unknown_keys == ()
    assert cfg.opa.url == ""  # the engine starts its own OPA
    assert cfg.opa.cache_dir == ""
    assert cfg.opa.bundle_dir == "/var/cache/talon-opa/bundles"
    assert cfg.listen_port == 2900
    assert cfg.auth.header == "X-Talon-Token"
    assert (cfg.queue.workers, cfg.queue.capacity) == (4, 500)
    assert cfg.deduplication.key == ("rule", "k8s.pod.name")
    assert cfg.rules_files == ("/etc/talon-opa/rules/00-base.yaml", "/etc/talon-opa/rules/10-more.yaml")
    assert "opa.yaml" not in r.one("ConfigMap", "-config")["data"]
    # the rendered rules files are valid Talon rules, merged in that order
    cm = r.one("ConfigMap", "-rules")["data"]
    for name, content in cm.items():
        (tmp_path / name).write_text(content)
    ruleset = rules_loader.load_ruleset([tmp_path / Path(p).name for p in cfg.rules_files], default_registry())
    assert [rule.name for rule in ruleset.rules] == ["Shell", "Shell later"]
    assert r.one("ClusterRole")["rules"] == NON_DEFAULT["rbac"]["rules"]
    assert r.one("PodDisruptionBudget")["spec"] == {
        "selector": r.deployment()["spec"]["selector"],
        "minAvailable": 1,
    }
    assert {"ServiceMonitor", "PrometheusRule"} <= set(r.kinds())
    endpoints = r.one("ServiceMonitor")["spec"]["endpoints"]
    assert [e["port"] for e in endpoints] == ["http"]


def test_auth_disabled_renders_no_secret_and_warns(tmp_path: Path) -> None:
    r = helm.template({"auth": {"enabled": False}})
    # the operator API keeps its own token: an open intake does not open undo and approvals
    assert [s["metadata"]["name"] for s in r.objects if s["kind"] == "Secret"] == ["talon-talon-opa-operator"]
    assert all(e["name"] != "AUTH_TOKEN" for c in r.containers().values() for e in c.get("env") or [])
    assert "credentials" not in yaml.safe_load(r.one("ConfigMap", "-config")["data"]["opa.yaml"])["services"]["engine"]
    assert load_config(r, tmp_path).auth.token == ""


def test_bad_values_are_refused_naming_the_value() -> None:
    done = helm.helm("template", "t", str(helm.CHART), "--set", "opa.mode=wasm", check=False)
    assert done.returncode != 0
    assert 'opa.mode must be sidecar or child, not "wasm"' in done.stderr
    done = helm.helm("template", "t", str(helm.CHART), "--set", "opa.sidecar.image.repository=opa", check=False)
    assert "opa.sidecar.image.tag is required" in done.stderr
    done = helm.helm("template", "t", str(helm.CHART), "--set", "rules.existingConfigMap=mine", check=False)
    assert "rules.existingConfigMap needs rules.fileNames" in done.stderr
    for key, instead in (
        ("config.listen_port=9000", "config.listen_port is set by the chart: use service.port"),
        ("config.opa.url=http://opa:8181", "config.opa.url is set by the chart: use opa.mode"),
        ("config.auth.token=x", "config.auth.token is set by the chart: use auth.token or auth.existingSecret"),
    ):
        done = helm.helm("template", "t", str(helm.CHART), "--set", key, check=False)
        assert instead in done.stderr
    done = helm.helm("template", "t", str(helm.CHART), "--set", "auth.token=a:b", check=False)
    assert "auth.token must not contain ':', ','" in done.stderr
    done = helm.helm("template", "t", str(helm.CHART), "--set", "config.tls.client_ca_file=/ca.pem", check=False)
    assert "config.tls.client_ca_file (client certificates) is not supported by the chart" in done.stderr


def test_tls_intake_probes_over_https_and_mounts_the_certificate() -> None:
    values = {
        "config": {"tls": {"cert_file": "/etc/talon-opa/tls/tls.crt", "key_file": "/etc/talon-opa/tls/tls.key"}},
        "extraVolumes": [{"name": "tls", "secret": {"secretName": "talon-tls"}}],
        "extraVolumeMounts": [{"name": "tls", "mountPath": "/etc/talon-opa/tls", "readOnly": True}],
    }
    r = helm.template(values)
    engine = r.containers()["engine"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert engine[probe]["httpGet"]["scheme"] == "HTTPS"
    assert {"name": "tls", "mountPath": "/etc/talon-opa/tls", "readOnly": True} in engine["volumeMounts"]
    assert {"name": "tls", "secret": {"secretName": "talon-tls"}} in r.deployment()["spec"]["template"]["spec"][
        "volumes"
    ]
    opa_cfg = yaml.safe_load(r.one("ConfigMap", "-config")["data"]["opa.yaml"])
    assert opa_cfg["services"]["engine"]["url"] == "https://127.0.0.1:2803"
    assert opa_cfg["services"]["engine"]["allow_insecure_tls"] is True
    # (the engine's loader checks that the files exist: tests/e2e/test_chart_cluster.py runs it with them)
    plain = helm.template().containers()["engine"]
    assert plain["readinessProbe"]["httpGet"]["scheme"] == "HTTP"


def test_chart_clusterrole_is_talon_opa_rbac_of_the_chart_rules() -> None:
    """rbac/clusterrole.yaml must be what `make chart-rbac` generates today (regenerate it on drift)."""
    registry = default_registry()
    ruleset = rules_loader.load_ruleset([helm.CHART / "rules" / "rules.yaml"], registry)
    expected = rbac.cluster_role(registry, uses_of(ruleset, registry), "talon-opa")
    committed = yaml.safe_load((helm.CHART / "rbac" / "clusterrole.yaml").read_text())
    assert committed == expected, "charts/talon-opa/rbac/clusterrole.yaml is stale: run `make chart-rbac`"
    rendered = helm.template().one("ClusterRole")
    assert rendered["rules"] == expected["rules"]
    assert rendered["metadata"]["name"] == "falco-talon-talon-opa"


def test_network_policy_admits_only_the_intake_from_chosen_sources_and_egress_to_what_the_engine_uses() -> None:
    spec = helm.template().one("NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    falco = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "falco"}}}
    assert spec["ingress"][0] == {"from": [falco], "ports": [{"port": 2803, "protocol": "TCP"}]}
    assert spec["ingress"][1]["ports"] == [{"port": 2803, "protocol": "TCP"}, {"port": 8282, "protocol": "TCP"}]
    ports = [sorted((p["port"], p["protocol"]) for p in rule["ports"]) for rule in spec["egress"]]
    assert ports == [[(53, "TCP"), (53, "UDP")], [(443, "TCP"), (6443, "TCP")]]  # DNS, API server; no OTLP
    traced = helm.template(
        {
            "config": {"otel": {"traces_enabled": True, "collector_port": 4318}},
            "networkPolicy": {
                "ingress": {"from": [], "metricsFrom": []},
                "egress": {"apiServer": {"cidrs": ["10.0.0.1/32"]}},
            },
        }
    ).one("NetworkPolicy")["spec"]
    assert traced["ingress"] == []  # no sources: nobody (an empty `from` would mean everybody)
    assert traced["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert traced["egress"][2] == {"ports": [{"port": 4318, "protocol": "TCP"}]}


GRAFANA_VARIABLES = {"$__rate_interval": "5m"}  # Grafana's interval variables (label values are strings)


def _selected(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects, from its syntax tree (the parser refuses bad
    PromQL: unknown functions, wrong argument types, unbalanced parentheses)."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name or "")
        elif isinstance(node, promql_parser.MatrixSelector):
            walk(node.vector_selector)
        elif isinstance(node, promql_parser.BinaryExpr):
            walk(node.lhs)
            walk(node.rhs)
        elif isinstance(node, promql_parser.AggregateExpr):
            walk(node.expr)
            walk(node.param)
        elif isinstance(node, promql_parser.Call):
            for arg in node.args:
                walk(arg)
        elif isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
            walk(node.expr)

    walk(promql_parser.parse(expr))
    return names


def _exported_names() -> set[str]:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        for s in family.samples:
            names.add(s.name)
        names.add(family.name)
    # histograms expose _bucket/_count/_sum samples only once observed
    for family in Metrics().registry.collect():
        if family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_count", "_sum")}
        if family.type == "counter":
            names.add(family.name + "_total")
    return names


def test_dashboard_and_alerts_name_only_metrics_the_engine_exports() -> None:
    exported = _exported_names()
    dashboard = json.loads((helm.CHART / "dashboards" / "talon-opa.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    r = helm.template({"prometheusRule": {"enabled": True}})
    alerts = r.one("PrometheusRule")["spec"]["groups"][0]["rules"]
    exprs += [a["expr"] for a in alerts]
    used = {name for e in exprs for name in _selected(e)} - {"up"}  # `up`: Prometheus' own, per target
    assert used - exported == set(), f"unknown metrics: {sorted(used - exported)}"
    # the panels cover OPA errors, failed actions and the queue; the alerts too
    for needed in ("talon_opa_opa_errors_total", "falcosecurity_falco_talon_actions_total", "talon_opa_queue_depth"):
        assert needed in used
    names = {a["alert"] for a in alerts}
    assert {"TalonOpaOpaErrors", "TalonOpaActionsFailing", "TalonOpaQueueSaturated"} <= names
    (saturated,) = [a for a in alerts if a["alert"] == "TalonOpaQueueSaturated"]
    assert saturated["expr"].endswith("> 8000")  # 0.8 of config.queue.capacity
    cm = r.one("ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["talon-opa.json"]) == dashboard


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("notifiers", "output_parameters"):
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


def test_values_config_defaults_are_the_engine_defaults(tmp_path: Path) -> None:
    """values.yaml's `config` repeats the engine's defaults (so that users see the keys): it must not
    silently change one."""
    values = yaml.safe_load((helm.CHART / "values.yaml").read_text())["config"]
    # the sections whose engine default is "none" are empty in values.yaml (the chart then renders none)
    for section in ("caps", "undo", "approvals"):
        assert values.pop(section) == {}, f"values.yaml config.{section} must be empty by default"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    from_values, defaults = config.load(path, env={}), config.Config()
    assert from_values.unknown_keys == ()
    for key in _leaves(values):
        got, want = from_values, defaults
        for part in key.split("."):
            got, want = getattr(got, part), getattr(want, part)
        assert got == want, f"values.yaml config.{key} is {got!r}, the engine's default is {want!r}"


def test_state_features_render_into_a_config_the_engine_loads_with_a_claim_and_the_operator_token(
    tmp_path: Path,
) -> None:
    r = helm.template({**FEATURES, "persistence": {"size": "5Gi", "storageClass": "fast-ssd"}})
    cfg = load_config(r, tmp_path, env={"AUTH_TOKEN": "intake", "AUTH_OPERATOR_TOKEN": "operator"})
    assert cfg.unknown_keys == ()
    # each section reaches the engine as the engine's own parser reads it from the values
    values = FEATURES["config"]
    assert cfg.caps == config.parse_caps(values["caps"])
    assert config.caps_need_pod(cfg.caps)
    assert cfg.undo == config.parse_undo(values["undo"])
    assert cfg.approvals == config.parse_approvals(values["approvals"])
    assert cfg.audit.path == "/var/lib/talon-opa/audit.jsonl"
    assert (cfg.audit.output, dict(cfg.audit.output_parameters)) == ("aws:s3", values["audit"]["output_parameters"])
    assert cfg.aws.region == "eu-west-1"
    assert (cfg.state_dir, cfg.auth.operator_token) == ("/var/lib/talon-opa", "operator")
    # state_dir (and the audit trail in it) on a claim, mounted read-write into the engine only
    claim = r.one("PersistentVolumeClaim")
    assert claim["metadata"]["name"] == "talon-talon-opa-state"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "fast-ssd",
        "resources": {"requests": {"storage": "5Gi"}},
    }
    spec = r.deployment()["spec"]
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["state"] == {"name": "state", "persistentVolumeClaim": {"claimName": "talon-talon-opa-state"}}
    engine, opa = r.containers()["engine"], r.containers()["opa"]
    assert {"name": "state", "mountPath": cfg.state_dir} in engine["volumeMounts"]
    assert all(m["name"] != "state" for m in opa["volumeMounts"])
    assert engine["securityContext"]["readOnlyRootFilesystem"] is True
    # one engine at a time owns the state and the audit trail's lock: the old pod stops first
    assert spec["strategy"] == {"type": "Recreate"}
    # the pod lookup of protected_labels / keep_last_replica is granted, after the rules' own grants
    generated = yaml.safe_load((helm.CHART / "rbac" / "clusterrole.yaml").read_text())["rules"]
    assert r.one("ClusterRole")["rules"] == generated + POD_LOOKUP
    operator = r.one("Secret", "-operator")
    (env,) = [e for e in engine["env"] if e["name"] == "AUTH_OPERATOR_TOKEN"]
    assert env["valueFrom"]["secretKeyRef"]["name"] == operator["metadata"]["name"]


def test_persistence_is_a_claim_only_when_state_must_outlive_the_pod() -> None:
    def state_volume(values: dict[str, Any]) -> tuple[dict[str, Any], list[str], str]:
        r = helm.template(values)
        (volume,) = [v for v in r.deployment()["spec"]["template"]["spec"]["volumes"] if v["name"] == "state"]
        claims = [o["metadata"]["name"] for o in r.objects if o["kind"] == "PersistentVolumeClaim"]
        return volume, claims, r.deployment()["spec"]["strategy"]["type"]

    empty = {"name": "state", "emptyDir": {"sizeLimit": "256Mi"}}
    claim = {"name": "state", "persistentVolumeClaim": {"claimName": "talon-talon-opa-state"}}
    ttl = {"config": {"undo": {"ttl_seconds": {"rules": {"Shell in a container": 60}}}}}
    approvals = {"config": {"approvals": {"require": [{"rules": ["Shell in a container"]}]}}}
    audit = {"config": {"audit": {"path": "/var/lib/talon-opa/audit.jsonl"}}}
    caps_only = {"config": {"caps": {"protected_namespaces": ["kube-system"]}}}
    assert state_volume({}) == (empty, [], "RollingUpdate")
    assert state_volume(caps_only) == (empty, [], "RollingUpdate")  # caps keep nothing on disk
    for values in (ttl, approvals, audit):
        assert state_volume(values) == (claim, ["talon-talon-opa-state"], "Recreate"), values
    assert state_volume({**ttl, "persistence": {"enabled": False}}) == (empty, [], "RollingUpdate")
    assert state_volume({"persistence": {"enabled": True}}) == (claim, ["talon-talon-opa-state"], "Recreate")
    mine = {"name": "state", "persistentVolumeClaim": {"claimName": "my-claim"}}
    assert state_volume({**ttl, "persistence": {"existingClaim": "my-claim"}}) == (mine, [], "Recreate")
    r = helm.template({**approvals, "persistence": {"storageClass": "-"}})
    assert r.one("PersistentVolumeClaim")["spec"]["storageClassName"] == ""
    assert "storageClassName" not in helm.template(approvals).one("PersistentVolumeClaim")["spec"]
    # an audit trail on a volume of the user's own
    extra = {
        "config": {"audit": {"path": "/audit/trail.jsonl"}},
        "extraVolumes": [{"name": "audit", "persistentVolumeClaim": {"claimName": "audit"}}],
        "extraVolumeMounts": [{"name": "audit", "mountPath": "/audit"}],
    }
    assert state_volume(extra) == (empty, [], "RollingUpdate")


def test_the_pod_lookup_rbac_is_added_only_when_caps_read_the_pod() -> None:
    def lookup_rules(values: dict[str, Any]) -> list[dict[str, Any]]:
        return [rule for rule in helm.template(values).one("ClusterRole")["rules"] if rule in POD_LOOKUP]

    assert lookup_rules({}) == []
    assert lookup_rules({"config": {"caps": {"limits": {"kubernetes:terminate": {"per_namespace": 1}}}}}) == []
    assert lookup_rules({"config": {"caps": {"protected_labels": {"tier": "*"}}}}) == POD_LOOKUP
    assert lookup_rules({"config": {"caps": {"keep_last_replica": ["kubernetes:terminate"]}}}) == POD_LOOKUP
    own = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}
    values = {"rbac": {"rules": [own]}, "config": {"caps": {"keep_last_replica": ["kubernetes:terminate"]}}}
    assert helm.template(values).one("ClusterRole")["rules"] == [own, *POD_LOOKUP]
    assert "ClusterRole" not in helm.template({**values, "rbac": {"create": False}}).kinds()


def test_operator_api_can_be_off_or_from_your_secret(tmp_path: Path) -> None:
    r = helm.template({"operator": {"enabled": False}})
    assert [s["metadata"]["name"] for s in r.objects if s["kind"] == "Secret"] == ["talon-talon-opa-auth"]
    assert all(e["name"] != "AUTH_OPERATOR_TOKEN" for e in r.containers()["engine"]["env"])
    assert load_config(r, tmp_path, env={"AUTH_TOKEN": "t"}).auth.operator_token == ""
    r = helm.template({"operator": {"existingSecret": "ops", "existingSecretKey": "approver"}})
    assert [s["metadata"]["name"] for s in r.objects if s["kind"] == "Secret"] == ["talon-talon-opa-auth"]
    (env,) = [e for e in r.containers()["engine"]["env"] if e["name"] == "AUTH_OPERATOR_TOKEN"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "ops", "key": "approver"}
    r = helm.template({"operator": {"token": "opsT0ken"}})
    assert base64.b64decode(r.one("Secret", "-operator")["data"]["token"]) == b"opsT0ken"


def test_bad_state_values_are_refused_naming_the_value() -> None:
    def refused(values: dict[str, Any]) -> str:
        done = helm.helm("template", "t", str(helm.CHART), "-f", helm._values_file(values), check=False)
        assert done.returncode != 0, values
        return done.stderr

    assert "config.state_dir is set by the chart: use stateDir (the mount path) and persistence.*" in refused(
        {"config": {"state_dir": "/data"}}
    )
    assert "config.auth.operator_token is set by the chart: use operator.token or operator.existingSecret" in refused(
        {"config": {"auth": {"operator_token": "x"}}}
    )
    assert "operator.token is auth.token: give the operator API a token of its own" in refused(
        {"auth": {"token": "same"}, "operator": {"token": "same"}}
    )
    assert "operator.existingSecret/existingSecretKey is the intake token's Secret and key" in refused(
        {"auth": {"existingSecret": "tokens"}, "operator": {"existingSecret": "tokens"}}
    )
    assert (
        "config.audit.path /data/audit.jsonl is not on a writable volume (the root filesystem is read-only): "
        "put it under stateDir, e.g. /var/lib/talon-opa/audit.jsonl"
    ) in refused({"config": {"audit": {"path": "/data/audit.jsonl"}}})
    read_only = {
        "config": {"audit": {"path": "/audit/trail.jsonl"}},
        "extraVolumes": [{"name": "audit", "emptyDir": {}}],
        "extraVolumeMounts": [{"name": "audit", "mountPath": "/audit", "readOnly": True}],
    }
    assert "config.audit.path /audit/trail.jsonl is not on a writable volume" in refused(read_only)
    assert "replicaCount 2 with a persistent state_dir (persistence)" in refused({**FEATURES, "replicaCount": 2})
    pvc_and_three = {"replicaCount": 3, "persistence": {"enabled": True}}
    assert "replicaCount 3 with a persistent state_dir" in refused(pvc_and_three)
    assert 'stateDir must be an absolute path, not "state"' in refused({"stateDir": "state"})
    assert "stateDir /tmp/state overlaps the chart's mount /tmp" in refused({"stateDir": "/tmp/state"})
    # several replicas keep their own state in emptyDirs: allowed (NOTES.txt warns; docs/undo.md)
    r = helm.template({**FEATURES, "replicaCount": 2, "persistence": {"enabled": False}})
    assert "PersistentVolumeClaim" not in r.kinds()
    assert r.deployment()["spec"]["replicas"] == 2
