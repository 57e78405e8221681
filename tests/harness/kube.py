"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler and
kwok simulating the nodes (pods reach Running; `exec` and `logs` go through the API server to kwok).

Authentication is by static token (admin in system:masters); RBAC is on, so a test can get its own
ServiceAccount bound to a given ClusterRole and see what it is forbidden to do.

The API server also serves the CNI vendors' own resource definitions, copied out of their Go modules by
`tools/build calico-crds cilium-crds`: Calico's projectcalico.org/v3 CRDs with the admission policies the
Tigera operator installs beside them, and Cilium's cilium.io/v2 CiliumNetworkPolicy CRD. Every object a
test or an actionner writes is validated against the vendor's real schema.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from talon_opa.core import binaries
from talon_opa.core.kube import KubeApiError, KubeClient, KubeConfig
from tests.harness import process
from tests.harness.process import Component, free_port

NODES = ("kwok-node-1", "kwok-node-2")
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
# tools/path names of the folders of vendor CRDs the cluster serves
VENDOR_CRDS = ("calico-crds", "cilium-crds")
# the Tigera operator's admission policies for v3 CRDs (tier and policy-types defaulting)
CALICO_ADMISSION = "calico-admission"

# kwok's pod stages never report ephemeral containers; a kubelet reports one running once it started it.
# This stage does the same as soon as the API server has stored an ephemeral container without a status
# (kwok starts nothing: exec in it runs on loopback like every kwok exec).
EPHEMERAL_CONTAINERS_RUNNING = {
    "kind": "Stage",
    "apiVersion": "kwok.x-k8s.io/v1alpha1",
    "metadata": {"name": "pod-ephemeral-containers-running"},
    "spec": {
        "resourceRef": {"apiGroup": "v1", "kind": "Pod"},
        "selector": {
            "matchExpressions": [
                {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                {"key": ".status.phase", "operator": "In", "values": ["Running"]},
                {
                    "key": "((.spec.ephemeralContainers // []) | length) > "
                    "((.status.ephemeralContainerStatuses // []) | length)",
                    "operator": "In",
                    "values": ["true"],
                },
            ]
        },
        "next": {
            "statusTemplate": """\
{{ $now := Now }}
ephemeralContainerStatuses:
{{ range .spec.ephemeralContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: false
  restartCount: 0
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
"""
        },
    },
}


def _write_kubeconfig(path: Path, server: str, token: str, namespace: str = "default") -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "user", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user", "namespace": namespace}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@dataclass
class KubeCluster:
    workdir: Path
    components: list[Component] = field(default_factory=list)
    server: str = ""
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    kubeconfig: Path = field(init=False)
    kwok_workdir: Path = field(init=False)
    container_log: Path = field(init=False)
    fake_bin: Path = field(init=False)  # first on PATH of every exec: tests put stand-ins (tcpdump...) here
    api: KubeClient = field(init=False)
    calico_admission: str = ""  # the admissionregistration version Calico's policies run at ("": none)

    async def start(self) -> None:
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        etcd_port, etcd_peer = free_port(), free_port()
        etcd = process.start(
            "etcd",
            "etcd",
            [
                "--name=t",
                f"--data-dir={w / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=t=http://127.0.0.1:{etcd_peer}",
                f"--listen-metrics-urls=http://127.0.0.1:{free_port()}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            w,
        )
        self.components.append(etcd)
        await etcd.wait_ready(lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/readyz"), within=30)

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (w / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (w / "tokens.csv").write_text(f"{self.admin_token},admin,admin,system:masters\n")
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        apiserver = process.start(
            "kube-apiserver",
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--cert-dir={w / 'apiserver-certs'}",
                f"--token-auth-file={w / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={w / 'sa.key'}",
                f"--service-account-signing-key-file={w / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                "--kubelet-preferred-address-types=InternalIP",
                "--profiling=false",
            ],
            w,
        )
        self.components.append(apiserver)
        await apiserver.wait_ready(lambda: _http_ok(f"{self.server}/readyz"), within=90)

        self.kubeconfig = _write_kubeconfig(w / "admin.kubeconfig", self.server, self.admin_token)
        self.api = KubeClient(KubeConfig.from_file(self.kubeconfig))

        allow = "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"
        kcm_port, sched_port = free_port(), free_port()
        kcm = process.start(
            "kube-controller-manager",
            "kube-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                allow,
                "--controllers=*",
                f"--service-account-private-key-file={w / 'sa.key'}",
                "--use-service-account-credentials=false",
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
            ],
            w,
        )
        sched = process.start(
            "kube-scheduler",
            "kube-scheduler",
            [
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                allow,
            ],
            w,
        )
        self.components += [kcm, sched]

        self.kwok_workdir = w / "kwok-exec"
        self.kwok_workdir.mkdir(exist_ok=True)
        self.container_log = w / "container.log"
        self.container_log.write_text("")
        self.fake_bin = w / "fake-bin"
        self.fake_bin.mkdir(exist_ok=True)
        stages = Path(binaries.find("kwok-stages"))
        extra = w / "kwok-extra.yaml"
        extra.write_text(
            yaml.safe_dump_all(
                [
                    {
                        "kind": "ClusterLogs",
                        "apiVersion": "kwok.x-k8s.io/v1alpha1",
                        "metadata": {"name": "all-logs"},
                        "spec": {"logs": [{"logsFile": str(self.container_log), "follow": False}]},
                    },
                    {
                        "kind": "ClusterExec",
                        "apiVersion": "kwok.x-k8s.io/v1alpha1",
                        "metadata": {"name": "all-exec"},
                        "spec": {
                            "execs": [
                                {
                                    "local": {
                                        "workDir": str(self.kwok_workdir),
                                        "envs": [
                                            {"name": "KWOK_EXEC", "value": "1"},
                                            {"name": "PATH", "value": f"{self.fake_bin}:{os.environ.get('PATH', '')}"},
                                        ],
                                    }
                                }
                            ]
                        },
                    },
                    EPHEMERAL_CONTAINERS_RUNNING,
                    _job_pods_complete_after_their_sleep(stages),
                ]
            )
        )
        kwok_port = free_port()
        kwok = process.start(
            "kwok",
            "kwok",
            [
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-ip=127.0.0.1",
                f"--node-port={kwok_port}",
                f"--server-address=127.0.0.1:{kwok_port}",
                "--node-lease-duration-seconds=40",
                f"--config={stages / 'node' / 'fast'}",
                f"--config={stages / 'node' / 'heartbeat-with-lease'}",
                f"--config={stages / 'pod' / 'fast' / 'pod-ready.yaml'}",
                f"--config={stages / 'pod' / 'fast' / 'pod-delete.yaml'}",
                f"--config={extra}",
            ],
            w,
        )
        self.components.append(kwok)
        await kcm.wait_ready(lambda: _http_ok(f"https://127.0.0.1:{kcm_port}/healthz"), within=60)
        await sched.wait_ready(lambda: _http_ok(f"https://127.0.0.1:{sched_port}/healthz"), within=60)
        await kwok.wait_ready(lambda: _http_ok(f"http://127.0.0.1:{kwok_port}/healthz"), within=60)
        for name in NODES:
            await self.create_node(name)
        for name in NODES:
            await self.wait_for(lambda n=name: self._node_ready(n), f"node {name} Ready", within=60)
        await self.install_vendor_crds()

    async def stop(self) -> None:
        if hasattr(self, "api"):
            await self.api.close()
        for c in reversed(self.components):
            c.stop()
        self.components.clear()

    def component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    # ---- waiting -------------------------------------------------------------------------------

    async def wait_for(self, check: Any, what: str, within: float = 60.0) -> Any:
        """Poll the async `check` until it returns a truthy value; fail naming `what` and the logs."""
        deadline = time.monotonic() + within
        last: object = None
        while time.monotonic() < deadline:
            dead = [c for c in self.components if not c.alive]
            if dead:
                raise process.ComponentFailed(
                    f"waiting for {what}: {dead[0].name} died; log tail:\n{dead[0].log_tail()}"
                )
            try:
                value = await check()
                if value:
                    return value
                last = value
            except KubeApiError as e:
                last = e
            await asyncio.sleep(0.1)
        hint = "\n".join(f"--- {c.name}\n{c.log_tail(10)}" for c in self.components)
        raise TimeoutError(f"{what}: not reached after {within}s (last: {last!r})\n{hint}")

    async def _node_ready(self, name: str) -> bool:
        node = await self.api.get(f"/api/v1/nodes/{name}")
        conds = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    # ---- vendor resource definitions -----------------------------------------------------------

    @staticmethod
    def vendor_docs(*names: str) -> list[dict[str, Any]]:
        """The YAML documents of the `tools/path` folders named, as the vendors ship them."""
        docs: list[dict[str, Any]] = []
        for name in names:
            for path in sorted(Path(binaries.find(name)).glob("*.yaml")):
                docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
        return docs

    async def install_vendor_crds(self) -> None:
        """Serve the vendors' CRDs, then Calico's admission policies where the server has the API."""
        docs = self.vendor_docs(*VENDOR_CRDS)
        for doc in docs:
            await self.install_crd(doc, wait=False)
        for doc in docs:
            await self.install_crd(doc)
        await self.install_calico_admission()

    async def install_crd(self, doc: Mapping[str, Any], *, wait: bool = True) -> None:
        """Create a CRD (unless it exists) and wait until its resources are served."""
        try:
            await self.api.post(CRD_PATH, dict(doc))
        except KubeApiError as e:
            if e.status != 409:
                raise
        if wait:
            name = doc["metadata"]["name"]
            await self.wait_for(lambda: self._crd_served(doc), f"CRD {name} established and served", within=60)

    async def _crd_served(self, doc: Mapping[str, Any]) -> bool:
        crd = await self.api.get(f"{CRD_PATH}/{doc['metadata']['name']}")
        conds = (crd.get("status") or {}).get("conditions") or []
        if not any(c["type"] == "Established" and c["status"] == "True" for c in conds):
            return False
        spec = doc["spec"]
        for version in (v["name"] for v in spec["versions"] if v.get("served")):
            found = await self.api.get(f"/apis/{spec['group']}/{version}")
            if spec["names"]["plural"] not in {r["name"] for r in found.get("resources", [])}:
                return False
            # served is not yet usable: a new resource answers 429 until its storage is initialised
            await self.api.get(f"/apis/{spec['group']}/{version}/{spec['names']['plural']}", params={"limit": "1"})
        return True

    async def remove_crd(self, name: str) -> dict[str, Any]:
        """Delete a CRD (and so every object of it) and wait until it is gone (`wait_crd_gone`); returns what
        was removed, to install again."""
        crd: dict[str, Any] = await self.api.get(f"{CRD_PATH}/{name}")
        await self.api.delete(f"{CRD_PATH}/{name}")
        await self.wait_crd_gone(crd)
        meta = crd["metadata"]
        return {
            "apiVersion": crd["apiVersion"],
            "kind": crd["kind"],
            "metadata": {"name": meta["name"]},
            "spec": crd["spec"],
        }

    async def wait_crd_gone(self, crd: Mapping[str, Any]) -> None:
        """Wait until a deleted CRD is gone and its resources are no longer served: for a moment after the
        CRD itself is gone the API server still serves them, refusing creates as "terminating"."""
        name, spec = crd["metadata"]["name"], crd["spec"]
        collections = [
            f"/apis/{spec['group']}/{v['name']}/{spec['names']['plural']}" for v in spec["versions"] if v.get("served")
        ]

        async def gone() -> bool:
            for path in (f"{CRD_PATH}/{name}", *collections):
                try:
                    await self.api.get(path, params={"limit": "1"})
                except KubeApiError as e:
                    if e.status == 404:
                        continue
                    raise
                return False
            return True

        await self.wait_for(gone, f"CRD {name} deleted and its resources no longer served", within=60)

    async def install_calico_admission(self) -> None:
        """The Tigera operator's MutatingAdmissionPolicies for v3 CRDs, at the version the server serves.

        The operator does the same: it reads these files and creates them at the served version of
        admissionregistration.k8s.io (v1 from Kubernetes 1.36). A server without the API gets none.
        """
        group = await self.api.get("/apis/admissionregistration.k8s.io")
        served = {v["version"] for v in group.get("versions", [])}
        version = next((v for v in ("v1", "v1beta1") if v in served), None)
        if version is None:
            return
        resources = await self.api.get(f"/apis/admissionregistration.k8s.io/{version}")
        if "mutatingadmissionpolicies" not in {r["name"] for r in resources.get("resources", [])}:
            return
        # policies before their bindings
        docs = self.vendor_docs(CALICO_ADMISSION)
        for doc in sorted(docs, key=lambda d: d["kind"] != "MutatingAdmissionPolicy"):
            plural = {"MutatingAdmissionPolicy": "mutatingadmissionpolicies"}.get(
                doc["kind"], "mutatingadmissionpolicybindings"
            )
            body = {**doc, "apiVersion": f"admissionregistration.k8s.io/{version}"}
            try:
                await self.api.post(f"/apis/admissionregistration.k8s.io/{version}/{plural}", body)
            except KubeApiError as e:
                if e.status != 409:
                    raise

        async def active() -> bool:  # the policies apply once the admission plugin has seen them
            probe = {
                "apiVersion": "projectcalico.org/v3",
                "kind": "NetworkPolicy",
                "metadata": {"name": "admission-probe", "labels": {}},
                "spec": {"selector": "all()"},
            }
            done = await self.api.post(
                "/apis/projectcalico.org/v3/namespaces/default/networkpolicies", probe, params={"dryRun": "All"}
            )
            return "projectcalico.org/tier" in done["metadata"].get("labels", {}) and "types" in done["spec"]

        await self.wait_for(active, "Calico's admission policies active", within=60)
        self.calico_admission = version

    # ---- objects -------------------------------------------------------------------------------

    async def create_node(self, name: str) -> None:
        await self.api.post(
            "/api/v1/nodes",
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"},
                },
                "status": {
                    "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                    "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                },
            },
        )

    async def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> str:
        await self.api.post(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}},
        )
        return name

    async def new_namespace(self, prefix: str = "t") -> str:
        return await self.create_namespace(f"{prefix}-{secrets.token_hex(3)}")

    @staticmethod
    def pod_template(app: str, labels: Mapping[str, str] | None = None, containers: int = 1) -> dict[str, Any]:
        return {
            "metadata": {"labels": {"app": app, **(labels or {})}},
            "spec": {
                "containers": [
                    {"name": f"c{i}" if i else app, "image": "registry.invalid/fake:1"} for i in range(containers)
                ],
                "tolerations": [{"operator": "Exists"}],
                "terminationGracePeriodSeconds": 30,
            },
        }

    async def create_workload(
        self, kind: str, namespace: str, name: str, *, replicas: int = 1, labels: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Create a Deployment, StatefulSet or DaemonSet running fake pods; returns the object."""
        plural = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}[kind]
        spec: dict[str, Any] = {
            "selector": {"matchLabels": {"app": name}},
            "template": self.pod_template(name, labels),
        }
        if kind != "DaemonSet":
            spec["replicas"] = replicas
        if kind == "StatefulSet":
            spec["serviceName"] = name
        obj: dict[str, Any] = await self.api.post(
            f"/apis/apps/v1/namespaces/{namespace}/{plural}",
            {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec},
        )
        return obj

    async def create_pod(
        self,
        namespace: str,
        name: str,
        *,
        labels: Mapping[str, str] | None = None,
        node: str | None = NODES[0],
        containers: int = 1,
    ) -> dict[str, Any]:
        """A bare pod (no owner); bound to `node` directly unless node is None (then scheduled)."""
        tpl = self.pod_template(name, labels, containers)
        if node:
            tpl["spec"]["nodeName"] = node
        obj: dict[str, Any] = await self.api.post(
            f"/api/v1/namespaces/{namespace}/pods",
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **tpl["metadata"]}, "spec": tpl["spec"]},
        )
        return obj

    async def running_pods(self, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": selector} if selector else None
        items = (await self.api.get(f"/api/v1/namespaces/{namespace}/pods", params=params))["items"]
        return [
            p
            for p in items
            if p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]

    async def wait_running(
        self, namespace: str, selector: str | None = None, count: int = 1, within: float = 60.0
    ) -> list[dict[str, Any]]:
        """Wait until `count` pods (matching the label selector) are Running; returns them."""

        async def check() -> list[dict[str, Any]] | None:
            pods = await self.running_pods(namespace, selector)
            return pods if len(pods) >= count else None

        pods: list[dict[str, Any]] = await self.wait_for(
            check, f"{count} running pod(s) in {namespace} ({selector or 'all'})", within
        )
        return pods

    async def service_account_with_role(
        self, namespace: str, name: str, rules: Sequence[Mapping[str, Any]]
    ) -> KubeConfig:
        """A ServiceAccount bound to a new ClusterRole with `rules`; returns a KubeConfig using its token."""
        await self.api.post(
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
        )
        role = f"{namespace}-{name}"
        await self.api.post(
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": role},
                "rules": [dict(r) for r in rules],
            },
        )
        await self.api.post(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            },
        )
        tr = await self.api.post(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
        )
        path = _write_kubeconfig(
            self.workdir / f"{role}.kubeconfig", self.server, tr["status"]["token"], namespace=namespace
        )
        return KubeConfig.from_file(path)


def _job_pods_complete_after_their_sleep(stages: Path) -> dict[str, Any]:
    """kwok's fast `pod-complete` stage (a Job's pod succeeds as soon as it runs), except that a pod whose
    first container's command is `sleep N` succeeds after N seconds, as it would on a kubelet."""
    stage: dict[str, Any] = yaml.safe_load((stages / "pod" / "fast" / "pod-complete.yaml").read_text())
    stage["spec"]["delay"] = {
        "durationMilliseconds": 0,
        "durationFrom": {
            "expressionFrom": '.spec.containers[0].command // [] | if .[0] == "sleep" then .[1] + "s" else empty end'
        },
    }
    return stage


async def _http_ok(url: str) -> bool:
    import aiohttp

    async with (
        aiohttp.ClientSession() as s,
        s.get(url, ssl=False, timeout=aiohttp.ClientTimeout(total=2)) as r,
    ):
        return r.status == 200
