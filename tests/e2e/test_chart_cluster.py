"""The Helm chart against real servers: `helm install` into the harness's kube-apiserver (pods Running on
kwok nodes), rendered non-default objects applied kind by kind, SubjectAccessReviews for the chart's
ServiceAccount, and the rendered pod's two processes (engine + sidecar OPA) run here from the rendered
config.

kwok fakes the containers: a Running pod here means the API server accepted every object and the pod was
scheduled and marked running, not that the engine runs inside it. The last test runs the rendered
engine and OPA commands as local processes to cover that part.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from talon_opa.core import binaries, config
from talon_opa.core.kube import KubeApiError
from talon_opa.opa.process import free_port
from tests.e2e.engine_harness import RunningEngine, running_engine, shell_alert
from tests.harness import helm, process
from tests.harness.kube import KubeCluster
from tests.harness.paths import ALERTS
from tests.test_chart import FEATURES, POD_LOOKUP

RELEASE = "talon"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # prometheus-operator's CRDs: not served unless installed


async def install(kube: KubeCluster, namespace: str, *args: str) -> str:
    """`helm upgrade --install` of the chart into the test cluster (helm runs in a thread); its output."""
    cmd = ("upgrade", "--install", RELEASE, str(helm.CHART), "--namespace", namespace, *args)
    done = await asyncio.to_thread(helm.helm, *cmd, kubeconfig=kube.kubeconfig)
    return done.stdout


async def apply(kube: KubeCluster, objects: list[dict[str, Any]], namespace: str) -> list[str]:
    """Create every object whose kind the API server serves (found by discovery); the skipped kinds."""
    skipped: list[str] = []
    for obj in objects:
        api_version, kind = obj["apiVersion"], obj["kind"]
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            resources = (await kube.api.get(base))["resources"]
        except KubeApiError as e:
            if e.status != 404:
                raise
            skipped.append(kind)  # the API group is not served
            continue
        (res,) = [r for r in resources if r["kind"] == kind and "/" not in r["name"]]
        ns = obj["metadata"].get("namespace", namespace)
        path = f"{base}/namespaces/{ns}/{res['name']}" if res["namespaced"] else f"{base}/{res['name']}"
        await kube.api.post(path, obj)
    return skipped


async def test_helm_install_creates_the_chart_and_the_engine_pod_runs_on_kwok(
    kube: KubeCluster, namespace: str
) -> None:
    notes = await install(kube, namespace)
    fullname = f"{RELEASE}-talon-opa"
    pods = await kube.wait_running(namespace, f"app.kubernetes.io/instance={RELEASE}")
    pod = pods[0]
    assert pod["spec"]["nodeName"].startswith("kwok-node-")
    assert [c["name"] for c in pod["spec"]["containers"]] == ["engine"]
    assert [(c["name"], c["restartPolicy"]) for c in pod["spec"]["initContainers"]] == [("opa", "Always")]
    statuses = pod["status"]["initContainerStatuses"] + pod["status"]["containerStatuses"]
    assert all("running" in s["state"] for s in statuses)  # as kwok reports them
    assert pod["spec"]["serviceAccountName"] == fullname
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["spec"]["containers"] + pod["spec"]["initContainers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # every object exists, as helm created it
    api = kube.api
    await api.get(f"/api/v1/namespaces/{namespace}/configmaps/{fullname}-rules")
    await api.get(f"/api/v1/namespaces/{namespace}/configmaps/{fullname}-dashboard")
    svc = await api.get(f"/api/v1/namespaces/{namespace}/services/{fullname}")
    assert [p["port"] for p in svc["spec"]["ports"]] == [2803, 8282]
    await api.get(f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/{fullname}")
    await api.get(f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{fullname}")
    await api.get(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{namespace}-{fullname}")
    # what Falcosidekick users set, from the install's notes
    assert f"config.webhook.address: http://{fullname}.{namespace}:2803" in notes
    assert 'config.webhook.customHeaders: "Authorization:Bearer <token>"' in notes

    # an upgrade keeps the generated token (helm's lookup against the real API server) and rolls the pod
    secret = f"/api/v1/namespaces/{namespace}/secrets/{fullname}-auth"
    token = base64.b64decode((await api.get(secret))["data"]["token"])
    await install(kube, namespace, "--set", "config.log_level=debug")
    assert base64.b64decode((await api.get(secret))["data"]["token"]) == token
    cm = await api.get(f"/api/v1/namespaces/{namespace}/configmaps/{fullname}-config")
    assert yaml.safe_load(cm["data"]["config.yaml"])["log_level"] == "debug"

    async def rolled() -> bool:
        running = await kube.running_pods(namespace, f"app.kubernetes.io/instance={RELEASE}")
        return bool(running) and all(p["metadata"]["name"] != pod["metadata"]["name"] for p in running)

    await kube.wait_for(rolled, "the pod replaced after a config change")


async def test_rendered_non_default_objects_apply_and_pods_run(kube: KubeCluster, namespace: str) -> None:
    values = {
        "opa": {"mode": "child"},
        "replicaCount": 2,
        "auth": {"existingSecret": "intake", "existingSecretKey": "token"},
        "rules": {"files": {"00-mine.yaml": (helm.CHART / "rules" / "rules.yaml").read_text()}},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "podDisruptionBudget": {"minAvailable": 1},
        "networkPolicy": {
            "ingress": {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "falcosidekick"}}}]},
            "egress": {"apiServer": {"cidrs": ["127.0.0.1/32"]}},
        },
        "config": {"otel": {"traces_enabled": True, "collector_endpoint": "http://jaeger.tracing:4318"}},
    }
    await kube.api.post(
        f"/api/v1/namespaces/{namespace}/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "intake"}, "stringData": {"token": "s3cret"}},
    )
    rendered = await asyncio.to_thread(helm.template, values, release=RELEASE, namespace=namespace)
    skipped = await apply(kube, rendered.objects, namespace)
    # the CRD kinds, unless test_servicemonitor_and_prometheusrule_fit_the_operator_crds installed them
    assert set(skipped) <= CRD_KINDS
    assert {o["kind"] for o in rendered.objects} - set(skipped) >= {"Deployment", "NetworkPolicy", "ClusterRole"}
    pods = await kube.wait_running(namespace, f"app.kubernetes.io/instance={RELEASE}", count=2)
    assert all([c["name"] for c in p["spec"]["containers"]] == ["engine"] for p in pods)
    assert all("initContainers" not in p["spec"] for p in pods)
    np = await kube.api.get(f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{RELEASE}-talon-opa")
    assert [r["ports"][0]["port"] for r in np["spec"]["egress"]] == [53, 443, 4318]

    # the disruption controller finds the engine pods through the PDB's selector: one of two may go
    async def pdb_counts() -> tuple[int, int, int] | None:
        pdb = await kube.api.get(f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/{RELEASE}-talon-opa")
        st = pdb.get("status", {})
        counts = (st.get("expectedPods", 0), st.get("currentHealthy", 0), st.get("disruptionsAllowed", 0))
        return counts if counts == (2, 2, 1) else None

    await kube.wait_for(pdb_counts, "the PDB counting both engine pods, one disruption allowed")


async def test_helm_install_with_state_keeps_it_on_a_claim_and_both_tokens_across_upgrades(
    kube: KubeCluster, namespace: str
) -> None:
    """Caps, undo TTLs, approvals and an audit trail: the state_dir claim binds (to a PV made here, the
    harness has no provisioner) and the pod runs with it; the generated operator token is not the intake
    token and both survive `helm upgrade`; the pod lookup's permissions exist exactly while the caps need them."""
    fullname, storage_class = f"{RELEASE}-talon-opa", f"manual-{namespace}"
    await kube.api.post(
        "/api/v1/persistentvolumes",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{namespace}-state"},
            "spec": {
                "capacity": {"storage": "5Gi"},
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": storage_class,
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": f"/var/lib/{namespace}"},
            },
        },
    )
    values = {**FEATURES, "persistence": {**FEATURES["persistence"], "storageClass": storage_class}}
    values_file = helm._values_file(values)
    try:
        notes = await install(kube, namespace, "-f", values_file)
        kept = "state_dir /var/lib/talon-opa (undo TTLs, approvals, the audit trail) is on the PersistentVolumeClaim"
        assert f"{kept}\n{fullname}-state" in notes
        assert f"kubectl -n {namespace} get secret {fullname}-operator" in notes
        (pod,) = await kube.wait_running(namespace, f"app.kubernetes.io/instance={RELEASE}")
        claim = await kube.api.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{fullname}-state")
        assert claim["status"]["phase"] == "Bound"
        assert claim["spec"]["volumeName"] == f"{namespace}-state"
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["state"]["persistentVolumeClaim"] == {"claimName": f"{fullname}-state"}
        (engine,) = pod["spec"]["containers"]
        (mount,) = [m for m in engine["volumeMounts"] if m["name"] == "state"]
        assert mount["mountPath"] == "/var/lib/talon-opa"
        assert not mount.get("readOnly")
        assert engine["securityContext"]["readOnlyRootFilesystem"] is True
        deployment = await kube.api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{fullname}")
        assert deployment["spec"]["strategy"]["type"] == "Recreate"

        async def tokens() -> tuple[bytes, bytes]:
            secrets = f"/api/v1/namespaces/{namespace}/secrets"
            intake = (await kube.api.get(f"{secrets}/{fullname}-auth"))["data"]["token"]
            operator = (await kube.api.get(f"{secrets}/{fullname}-operator"))["data"]["token"]
            return base64.b64decode(intake), base64.b64decode(operator)

        before = await tokens()
        assert before[0] != before[1]
        assert len(before[1]) == 40
        user = f"system:serviceaccount:{namespace}:{fullname}"
        lookups = [(g, r, "get") for rule in POD_LOOKUP for g in rule["apiGroups"] for r in rule["resources"]]

        async def allowed() -> list[bool]:
            return list(await asyncio.gather(*(_allowed(kube, user, namespace, v, g, r) for g, r, v in lookups)))

        assert await allowed() == [True] * len(lookups)
        # an upgrade without the caps that read the pod: the same tokens, the lookup's grants withdrawn
        # (those the chart's rules need themselves stay: kubernetes:terminate reads pods and their owners)
        upgraded = {**values, "config": {k: v for k, v in values["config"].items() if k != "caps"}}
        await install(kube, namespace, "-f", helm._values_file(upgraded))
        assert await tokens() == before
        generated = yaml.safe_load((helm.CHART / "rbac" / "clusterrole.yaml").read_text())["rules"]
        still = {
            (g, r) for rule in generated if "get" in rule["verbs"] for g in rule["apiGroups"] for r in rule["resources"]
        }
        assert ("", "replicationcontrollers") not in still
        assert await allowed() == [(g, r) in still for g, r, _ in lookups]
        cm = await kube.api.get(f"/api/v1/namespaces/{namespace}/configmaps/{fullname}-config")
        assert "caps" not in yaml.safe_load(cm["data"]["config.yaml"])
        await kube.wait_running(namespace, f"app.kubernetes.io/instance={RELEASE}")
    finally:
        await asyncio.to_thread(
            helm.helm, "uninstall", RELEASE, "--namespace", namespace, "--wait", kubeconfig=kube.kubeconfig
        )
        await kube.api.delete(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{fullname}-state")
        await kube.api.delete(f"/api/v1/persistentvolumes/{namespace}-state")


def _crds() -> list[dict[str, Any]]:
    folder = Path(binaries.find("prometheus-crds"))
    return [yaml.safe_load(p.read_text()) for p in sorted(folder.glob("*.yaml"))]


async def install_crds(kube: KubeCluster) -> None:
    """prometheus-operator's ServiceMonitor and PrometheusRule CRDs (from its Go module, `tools/build promcrds`)."""
    for crd in _crds():
        name = crd["metadata"]["name"]
        try:
            await kube.api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        except KubeApiError as e:
            if e.status != 409:  # already installed by an earlier test of the session
                raise

        async def established(name: str = name) -> bool:
            got = await kube.api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conditions = got.get("status", {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        await kube.wait_for(established, f"CRD {name} established", within=30)


async def test_servicemonitor_and_prometheusrule_fit_the_operator_crds(kube: KubeCluster, namespace: str) -> None:
    """The API server validates both against the CRDs' OpenAPI schemas (a field of the wrong shape is refused)."""
    await install_crds(kube)
    rendered = await asyncio.to_thread(
        helm.template,
        {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
        release=RELEASE,
        namespace=namespace,
    )
    objects = [o for o in rendered.objects if o["kind"] in CRD_KINDS]
    assert {o["kind"] for o in objects} == CRD_KINDS
    assert await apply(kube, objects, namespace) == []
    base = f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}"
    monitor = await kube.api.get(f"{base}/servicemonitors/{RELEASE}-talon-opa")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http", "opa-diag"]
    rule = await kube.api.get(f"{base}/prometheusrules/{RELEASE}-talon-opa")
    assert len(rule["spec"]["groups"][0]["rules"]) == 10
    # the schema is enforced: a rule without `expr` is refused
    broken = dict(objects[0] if objects[0]["kind"] == "PrometheusRule" else objects[1])
    broken = {**broken, "metadata": {"name": "broken"}, "spec": {"groups": [{"name": "g", "rules": [{"alert": "A"}]}]}}
    with pytest.raises(KubeApiError) as refused:
        await kube.api.post(f"{base}/prometheusrules", broken)
    assert refused.value.status == 422


async def _allowed(kube: KubeCluster, user: str, namespace: str, verb: str, group: str, resource: str) -> bool:
    review = await kube.api.post(
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
                "resourceAttributes": {"namespace": "payments", "verb": verb, "group": group, "resource": resource},
            },
        },
    )
    return bool(review["status"].get("allowed"))


VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")


async def test_the_chart_service_account_can_do_what_the_rules_need_and_nothing_more(
    kube: KubeCluster, namespace: str
) -> None:
    await install(kube, namespace)
    user = f"system:serviceaccount:{namespace}:{RELEASE}-talon-opa"
    generated = yaml.safe_load((helm.CHART / "rbac" / "clusterrole.yaml").read_text())["rules"]
    granted = {
        (g, r, v) for rule in generated for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }
    # what the chart's rules need: label (get/patch pods), terminate (delete pods, get owners), isolate
    assert {("", "pods", "get"), ("", "pods", "patch"), ("", "pods", "delete")} <= granted
    assert ("networking.k8s.io", "networkpolicies", "create") in granted
    checks = {(g, r, v) for (g, r, _) in granted for v in VERBS} | {
        ("", "nodes", "delete"),
        ("", "nodes", "patch"),
        ("", "secrets", "get"),
        ("", "secrets", "list"),
        ("", "configmaps", "get"),
        ("", "pods/exec", "create"),
        ("", "pods", "create"),
        ("apps", "deployments", "delete"),
        ("rbac.authorization.k8s.io", "clusterroles", "escalate"),
        ("rbac.authorization.k8s.io", "clusterrolebindings", "create"),
    }
    answers = await asyncio.gather(*(_allowed(kube, user, namespace, v, g, r) for (g, r, v) in sorted(checks)))
    allowed = {check for check, ok in zip(sorted(checks), answers, strict=True) if ok}
    assert allowed == granted


def falcosidekick_headers(custom_headers: str) -> dict[str, str]:
    """Falcosidekick's parsing of WEBHOOK_CUSTOMHEADERS (config.go): split on ",", then on ":", and keep
    only the pairs that split in exactly two (a value with ":" or "," is dropped silently)."""
    pairs = (item.split(":") for item in custom_headers.split(","))
    return {kv[0]: kv[1] for kv in pairs if len(kv) == 2}


def test_why_the_chart_refuses_tokens_with_colons_or_commas() -> None:
    assert falcosidekick_headers("Authorization:Bearer t0k3n") == {"Authorization": "Bearer t0k3n"}
    assert falcosidekick_headers("Authorization:Bearer a:b") == {}  # Falcosidekick drops it: 401 forever
    assert falcosidekick_headers("Authorization:Bearer a,b") == {"Authorization": "Bearer a"}  # cut: 401


async def _state_in_state_dir(e: RunningEngine, state_dir: Path, token: str, operator: str) -> None:
    """The engine keeps its undo records and approvals in the rendered state_dir, writes the audit trail
    there and ships it, and the operator API takes the operator token, never the intake's."""
    assert (state_dir / "undo").is_dir()
    assert (state_dir / "approvals").is_dir()
    for path in ("/v1/approvals", "/v1/undo"):
        assert (await e.post(path, method="GET", headers={"Authorization": f"Bearer {operator}"})).status == 200
        assert (await e.post(path, method="GET", headers={"Authorization": f"Bearer {token}"})).status == 401
    trail = state_dir / "audit.jsonl"
    for _ in range(100):
        if trail.exists() and len(trail.read_text().splitlines()) >= 2:
            break
        await asyncio.sleep(0.1)
    lines = [json.loads(line) for line in trail.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["alert", "alert"]
    for _ in range(100):
        shipped = sorted((state_dir / "shipped").glob("*audit-*.jsonl"))
        if sum(len(p.read_text().splitlines()) for p in shipped) >= 2:
            break
        await asyncio.sleep(0.1)
    assert "".join(p.read_text() for p in shipped) == trail.read_text()


def _self_signed(folder: Path) -> None:
    """tls.crt/tls.key for the Service's DNS name (not 127.0.0.1, where the sidecar connects)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "talon-talon-opa.falco.svc")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("talon-talon-opa.falco.svc")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True)
    (folder / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@pytest.mark.parametrize(("tls", "state"), [(False, False), (True, False), (False, True)], ids=["http", "tls", "state"])
async def test_the_rendered_pod_commands_run_here_engine_and_sidecar_opa_share_the_bundle(
    tls: bool, state: bool
) -> None:
    """The engine's rendered config.yaml and the sidecar's rendered `opa run` (config with ${AUTH_TOKEN}),
    with the pod's paths moved to a local folder laid out like ConfigMap volumes: OPA fetches the engine's
    bundle with the token (over TLS too, when the intake has a certificate), the engine decides through
    OPA's unix socket, and a rules ConfigMap update (the kubelet's ..data swap) reaches the sidecar as a
    new revision. With the state values (caps, undo TTLs, approvals, an audit trail shipped through an
    output), the engine keeps its state in the rendered state_dir and opens the operator API with the
    operator token only."""
    port, diag, token, operator = free_port(), free_port(), "chart-token", "operator-token"
    values: dict[str, Any] = {"service": {"port": port}, "auth": {"token": token}}
    if state:
        shipped = {"output": "local:file", "output_parameters": {"destination": "/var/lib/talon-opa/shipped"}}
        audit = {**FEATURES["config"]["audit"], **shipped, "segment_seconds": 0.2}  # a folder here, not S3
        values |= {"config": {**FEATURES["config"], "audit": audit}}
        values["operator"] = {"token": operator}
    if tls:
        certs = {"cert_file": "/etc/talon-opa/tls/tls.crt", "key_file": "/etc/talon-opa/tls/tls.key"}
        values["config"] = {"tls": certs}
    r = await asyncio.to_thread(helm.template, values)
    work = Path(tempfile.mkdtemp(prefix="tc-"))  # short: unix socket paths are limited to 107 bytes
    if tls:
        _self_signed(work / "etc" / "tls")
        probe = r.containers()["engine"]["readinessProbe"]["httpGet"]
        assert probe["scheme"] == "HTTPS"

    def local(text: str) -> str:
        moves = (
            ("/etc/talon-opa", "etc"),
            ("/var/lib/talon-opa", "state"),
            ("/var/cache/talon-opa", "cache"),
            ("/var/run/talon-opa", "run"),
        )
        for pod_path, here in moves:
            text = text.replace(pod_path, str(work / here))
        return text

    def mount(name: str, data: dict[str, str], version: str) -> None:
        """A ConfigMap volume as the kubelet lays it out: key -> ..data/key, ..data -> ..<version>."""
        folder = work / "etc" / name
        (folder / f"..{version}").mkdir(parents=True)
        for key, content in data.items():
            (folder / f"..{version}" / key).write_text(local(content))
            if not (folder / key).is_symlink():
                os.symlink(f"..data/{key}", folder / key)
        os.symlink(f"..{version}", folder / "..data_tmp")
        os.replace(folder / "..data_tmp", folder / "..data")  # the kubelet's atomic swap

    rules = r.one("ConfigMap", "-rules")["data"]
    mount("config", r.one("ConfigMap", "-config")["data"], "v1")
    mount("rules", rules, "v1")
    (work / "run").mkdir()
    if state:
        (work / "state" / "shipped").mkdir(parents=True)  # local:file ships into an existing folder
    env = {"AUTH_TOKEN": token} | ({"AUTH_OPERATOR_TOKEN": operator} if state else {})
    cfg = config.load(work / "etc" / "config" / "config.yaml", env=env)
    assert cfg.state_dir == str(work / "state")
    cfg = dataclasses.replace(cfg, listen_address="127.0.0.1", log_format="text")

    opa_c = r.containers()["opa"]
    args = [local(a).replace(f"0.0.0.0:{8282}", f"127.0.0.1:{diag}") for a in opa_c["args"]]
    sidecar = process.start("sidecar-opa", opa_c["command"][0], args, work, env={"AUTH_TOKEN": token})
    try:
        changes = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "unknown_keys"}
        connector = aiohttp.TCPConnector(ssl=False)  # a client of the self-signed intake
        async with running_engine(work, "", connector=connector, **changes) as e:
            auth = {"Authorization": f"Bearer {token}"}
            for _ in range(200):
                ready = await e.get("/readyz")
                if ready.status == 200:
                    break
                await asyncio.sleep(0.1)
            assert ready.status == 200, (ready.body, sidecar.log_tail())
            assert e.engine.built is not None
            assert ready.body["revision"] == e.engine.built.revision
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{diag}/health?bundles") as h:
                assert h.status == 200  # the sidecar's readiness probe
            assert (await e.post(json_body=shell_alert("api-1"))).status == 401
            # what Falcosidekick sends with the chart's documented webhook.customHeaders
            sidekick = {
                **falcosidekick_headers(f"Authorization:Bearer {token}"),
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "Falcosidekick",
            }
            sent = await e.post(
                data=(ALERTS / "falcosidekick-terminal-shell-in-container.json").read_bytes(), headers=sidekick
            )
            assert sent.status == 200, sent.body
            await asyncio.wait_for(e.drained(), 15)
            # no cluster here: the engine runs every step in dry-run, decided by the sidecar
            assert await e.metric("falcosecurity_falco_talon_actions_total", rule="Shell in a container") == 1

            # the rules ConfigMap changes: the engine reloads it and the sidecar follows the new revision
            old = e.engine.built.revision
            renamed = rules["rules.yaml"].replace("- rule: Shell in a container", "- rule: Shell, renamed")
            mount("rules", {"rules.yaml": renamed}, "v2")
            for _ in range(300):
                ready = await e.get("/readyz")
                if e.engine.built.revision != old and ready.body.get("revision") == e.engine.built.revision:
                    break
                await asyncio.sleep(0.1)
            assert ready.body.get("revision") == e.engine.built.revision != old, ready.body
            assert (await e.post(json_body=shell_alert("api-2"), headers=auth)).status == 200
            await asyncio.wait_for(e.drained(), 15)
            assert await e.metric("falcosecurity_falco_talon_actions_total", rule="Shell, renamed") == 1
            if state:
                await _state_in_state_dir(e, work / "state", token, operator)
    finally:
        sidecar.stop()
        shutil.rmtree(work, ignore_errors=True)
