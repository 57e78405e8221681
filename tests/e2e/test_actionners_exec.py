"""kubernetes:exec, :script, :log, :download, :tcpdump and :sysdig against a real API server.

Every actionner runs as a ServiceAccount bound to exactly the ClusterRole generated from the registry's
grants for that use (what `talon-opa rbac` gives it). Commands go through the API server's exec
subresource to kwok, whose ClusterExec runs them on loopback in the harness's kwok work directory (so a
file a command writes is visible to the test there); logs come from kwok's ClusterLogs file.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from talon_opa.actionners.kubernetes import _capture
from talon_opa.actionners.kubernetes.download import Download
from talon_opa.actionners.kubernetes.exec import Exec
from talon_opa.actionners.kubernetes.log import Log
from talon_opa.actionners.kubernetes.script import Script
from talon_opa.actionners.kubernetes.sysdig import Sysdig
from talon_opa.actionners.kubernetes.tcpdump import Tcpdump
from talon_opa.catalog import default_registry
from talon_opa.core.config import Config
from talon_opa.core.errors import StepFailed
from talon_opa.core.events import Alert
from talon_opa.core.kube import KubeClient
from talon_opa.plugins import rbac
from talon_opa.plugins.clients import ClientProvider
from talon_opa.plugins.params import NoParams
from talon_opa.plugins.runtime import Outcome
from tests.harness.kube import NODES, KubeCluster

REGISTRY = default_registry()

Run = Callable[..., Awaitable[Outcome]]


def alert(namespace: str, pod: str, **fields: Any) -> Alert:
    return Alert(
        rule="Terminal shell in container",
        priority="Notice",
        hostname="falco-node-1",
        output_fields={"k8s.ns.name": namespace, "k8s.pod.name": pod, **fields},
    )


@pytest_asyncio.fixture(loop_scope="session")
async def run(kube: KubeCluster, namespace: str) -> AsyncIterator[Run]:
    """`await run(Plugin, alert, **params)`: the plugin built with a KubeClient whose ServiceAccount has
    exactly the ClusterRole generated for this use."""
    session = aiohttp.ClientSession()
    clients: list[KubeClient] = []

    async def go(plugin: Any, event: Alert, **raw: Any) -> Outcome:
        spec = plugin.spec
        rules = rbac.cluster_role(REGISTRY, [(spec.name, raw)], "unused")["rules"]
        client = KubeClient(await kube.service_account_with_role(namespace, f"sa-{secrets.token_hex(3)}", rules))
        clients.append(client)
        provided = ClientProvider(Config(), http=session, kube=client).clients_for(spec)
        outcome: Outcome = await plugin(provided, NoParams()).run(event, spec.decode(raw))
        return outcome

    yield go
    for c in clients:
        await c.close()
    await session.close()


async def running_pod(kube: KubeCluster, namespace: str, name: str, containers: int = 1) -> None:
    await kube.create_pod(namespace, name, containers=containers)
    await kube.wait_running(namespace, f"app={name}")


def workfile(kube: KubeCluster, name: str) -> Path:
    """A file in kwok's exec work directory (the "container's" current directory), unique to a test."""
    return kube.kwok_workdir / name


# ---- exec ----------------------------------------------------------------------------------------


async def test_exec_runs_in_every_container_and_returns_the_last_stdout(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    await running_pod(kube, namespace, "api-1", containers=2)
    tag = secrets.token_hex(4)

    outcome = await run(
        Exec, alert(namespace, "api-1"), command=f"echo run >> ran-{tag}; printf '\\033[31mred\\033[0m %s' {tag}"
    )

    assert outcome.status == "success"
    assert outcome.message == f"red {tag}"  # ANSI colours removed, as Talon does
    assert outcome.objects["exit_code"] == "0"
    assert outcome.objects["container"] == "c1"  # the last container's output
    assert (outcome.objects["pod"], outcome.objects["namespace"]) == ("api-1", namespace)
    assert workfile(kube, f"ran-{tag}").read_text() == "run\nrun\n"  # one run per container


async def test_exec_non_zero_exit_fails_with_the_code_and_stderr_tail(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    await running_pod(kube, namespace, "api-1")

    with pytest.raises(StepFailed) as caught:
        await run(Exec, alert(namespace, "api-1"), command="echo partial; echo 'no such process' >&2; exit 7")

    assert "the command exited with code 7 in the container 'api-1': no such process" in str(caught.value)


async def test_exec_uses_the_configured_shell(kube: KubeCluster, namespace: str, run: Run) -> None:
    await running_pod(kube, namespace, "api-1")

    outcome = await run(Exec, alert(namespace, "api-1"), shell="/bin/bash", command='echo "$BASH_VERSION" | cut -c1')

    assert outcome.message.strip().isdigit()
    with pytest.raises(StepFailed, match="code 127"):
        await run(Exec, alert(namespace, "api-1"), shell="sh", command="no-such-command-here")


# ---- shell-safe templating ---------------------------------------------------------------------

HOSTILE = {
    "substitution": "$(touch {marker})",
    "backticks": "`touch {marker}`",
    "semicolon": "x; touch {marker}",
    "single quotes": "'; touch {marker}; echo '",
    "double quotes": '"; touch {marker}; echo "',
    "newlines": "a\ntouch {marker}\nb",
    "variables": "${{HOME}} $PATH \\$(touch {marker})",
    "binary-looking": "\x01\x02\x7f\u00ff\ufffd\x1b[31m;|&<>*?[]{{}}~#! touch {marker}",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_alert_values_arrive_verbatim_and_never_run(
    kube: KubeCluster, namespace: str, run: Run, kind: str
) -> None:
    await running_pod(kube, namespace, "api-1")
    tag = secrets.token_hex(4)
    marker = workfile(kube, f"pwned-{tag}")
    value = HOSTILE[kind].format(marker=marker)
    out = workfile(kube, f"value-{tag}")
    event = alert(namespace, "api-1", **{"proc.cmdline": value, "fd.name": value})

    # quoted and unquoted references, in a command and in a script
    outcome = await run(Exec, event, command=f"printf '%s' \"${{PROC_CMDLINE}}\" > {out.name}; echo $FD_NAME")
    await run(Script, event, script=f'echo ${{PROC_CMDLINE}} >/dev/null\nprintf "%s" "$FD_NAME" >> {out.name}\n')

    assert out.read_bytes() == (value + value).encode()  # byte for byte, twice
    assert not marker.exists()
    assert outcome.objects["variables"] == "PROC_CMDLINE,FD_NAME"


async def test_the_marker_is_created_when_the_command_itself_says_so(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    """The control for the test above: the same payload written in the command does run."""
    await running_pod(kube, namespace, "api-1")
    marker = workfile(kube, f"pwned-{secrets.token_hex(4)}")

    await run(Exec, alert(namespace, "api-1"), command=f"echo $(touch {marker})")

    assert marker.exists()


async def test_values_come_from_this_alert_only(kube: KubeCluster, namespace: str, run: Run) -> None:
    await running_pod(kube, namespace, "api-1")
    command = 'printf "[%s][%s][%s][%s]" "${PROC_PID}" "${PRIORITY}" "${FALCO-TALON_MISSING}" "$K8S_POD_NAME"'

    first = await run(Exec, alert(namespace, "api-1", **{"proc.pid": 1234567}), command=command)
    second = await run(Exec, alert(namespace, "api-1"), command=command)

    assert first.message == "[1234567][Notice][][api-1]"  # numbers in decimal, not 1.234567e+06
    assert second.message == "[][Notice][][api-1]"  # nothing left over from the first alert


async def test_talon_context_names_work_with_their_dash(kube: KubeCluster, namespace: str, run: Run) -> None:
    await running_pod(kube, namespace, "api-1")
    fields = {"k8s.ns.name": namespace, "k8s.pod.name": "api-1"}
    event = Alert(rule="r", output_fields=fields, context={"falco-talon.action": "A"})

    outcome = await run(Exec, event, command='printf "%s/%s" "${FALCO-TALON_ACTION}" "$FALCO_TALON_ACTION"')

    assert outcome.message == "A/A"


async def test_a_nul_in_a_referenced_value_fails_before_anything_runs(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    await running_pod(kube, namespace, "api-1")
    marker = workfile(kube, f"ran-{secrets.token_hex(4)}")

    with pytest.raises(StepFailed, match=r"\$\{PROC_NAME\} holds a NUL byte"):
        await run(Exec, alert(namespace, "api-1", **{"proc.name": "a\x00b"}), command=f"touch {marker}; ${{PROC_NAME}}")

    assert not marker.exists()
    # unreferenced, the same value is harmless
    await run(Exec, alert(namespace, "api-1", **{"proc.name": "a\x00b"}), command=f"touch {marker}")
    assert marker.exists()


# ---- script ------------------------------------------------------------------------------------


async def test_script_runs_in_the_last_container_only(kube: KubeCluster, namespace: str, run: Run) -> None:
    await running_pod(kube, namespace, "api-1", containers=3)
    tag = secrets.token_hex(4)
    script = f"set -e\necho one >> s-{tag}\nif true; then\n  echo two\nfi\n"

    outcome = await run(Script, alert(namespace, "api-1"), script=script)

    assert outcome.message == "two\n"
    assert outcome.objects["container"] == "c2"
    assert workfile(kube, f"s-{tag}").read_text() == "one\n"


async def test_script_from_a_file_with_another_shell(
    kube: KubeCluster, namespace: str, run: Run, tmp_path: Path
) -> None:
    await running_pod(kube, namespace, "api-1")
    path = tmp_path / "collect.sh"
    path.write_text('arr=(a b c)\necho "${#arr[@]} ${K8S_POD_NAME}"\n')  # bash arrays

    outcome = await run(Script, alert(namespace, "api-1"), file=str(path), shell="bash")

    assert outcome.message == "3 api-1\n"


async def test_script_failure_names_the_code_and_stderr(kube: KubeCluster, namespace: str, run: Run) -> None:
    await running_pod(kube, namespace, "api-1")

    with pytest.raises(StepFailed, match=r"the script exited with code 2 in the container 'api-1': boom \(the pod"):
        await run(Script, alert(namespace, "api-1"), script="echo boom >&2\nexit 2\n")


async def test_exec_in_a_missing_pod_fails_naming_it(namespace: str, run: Run) -> None:
    with pytest.raises(StepFailed, match=f"the pod 'nope' in the namespace '{namespace}' doesn't exist"):
        await run(Exec, alert(namespace, "nope"), command="true")


# ---- log ---------------------------------------------------------------------------------------


def append_logs(kube: KubeCluster, lines: list[str]) -> None:
    """kwok serves every container's log from one file (ClusterLogs, CRI log format): add lines to it."""
    with kube.container_log.open("a") as f:
        f.writelines(f"2026-12-01T10:00:00.000000000Z stdout F {line}\n" for line in lines)


async def test_log_fetches_the_tail_as_the_artifact(kube: KubeCluster, namespace: str, run: Run) -> None:
    await running_pod(kube, namespace, "api-1", containers=2)
    tag = secrets.token_hex(4)
    append_logs(kube, [f"{tag} line {i}" for i in range(50)])

    outcome = await run(Log, alert(namespace, "api-1"), tail_lines=3)

    assert outcome.message == f"the logs for the pod 'api-1' in the namespace '{namespace}' has been downloaded"
    assert outcome.artifact is not None
    assert outcome.artifact.name == "log"
    assert outcome.artifact.data.decode().splitlines() == [f"{tag} line {i}" for i in (47, 48, 49)]
    assert dict(outcome.artifact.objects) == {"pod": "api-1", "namespace": namespace}
    assert outcome.objects["container"] == "api-1"  # the first container with logs

    named = await run(Log, alert(namespace, "api-1"), tail_lines=1, container="c1")
    assert named.objects["container"] == "c1"
    assert named.artifact is not None
    assert named.artifact.data == f"{tag} line 49\n".encode()

    with pytest.raises(StepFailed, match=r"has no container 'nope'.*its containers are: api-1, c1"):
        await run(Log, alert(namespace, "api-1"), container="nope")


async def test_log_is_bounded_and_says_so(kube: KubeCluster, namespace: str, run: Run) -> None:
    await running_pod(kube, namespace, "api-1")
    append_logs(kube, ["x" * 1000 for _ in range(300)])  # 300 kB asked for, 100 kB kept

    outcome = await run(Log, alert(namespace, "api-1"), tail_lines=300, max_bytes=100_000)

    assert outcome.artifact is not None
    assert len(outcome.artifact.data) == 100_000
    assert outcome.objects["truncated"] == "true"
    assert "cut at 100000 bytes" in outcome.message


# ---- download ----------------------------------------------------------------------------------


async def test_download_copies_the_file_the_alert_names_byte_for_byte(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    await running_pod(kube, namespace, "api-1")
    path = workfile(kube, f"dropped binary $(touch x) {secrets.token_hex(4)}")  # spaces and $( ) in the name
    content = bytes(range(256)) * 64 + b"\x00end"
    path.write_bytes(content)

    outcome = await run(Download, alert(namespace, "api-1", **{"fd.name": str(path)}), file="${FD_NAME}")

    assert outcome.message == f"the file '{path}' has been downloaded"
    assert outcome.artifact is not None
    assert outcome.artifact.name == str(path)
    assert outcome.artifact.data == content
    assert dict(outcome.artifact.objects) == {"pod": "api-1", "namespace": namespace, "file": str(path)}
    assert not workfile(kube, "x").exists()


async def test_download_of_a_huge_file_stops_at_the_bound(kube: KubeCluster, namespace: str, run: Run) -> None:
    await running_pod(kube, namespace, "api-1")
    path = workfile(kube, f"huge-{secrets.token_hex(4)}")
    with path.open("wb") as f:
        for _ in range(32):
            f.write(b"\xab" * (1024 * 1024))  # 32 MiB

    outcome = await run(Download, alert(namespace, "api-1"), file=str(path), max_bytes=1024 * 1024)

    assert outcome.artifact is not None
    assert len(outcome.artifact.data) == 1024 * 1024
    assert outcome.objects["truncated"] == "true"
    assert "cut at 1048576 bytes" in outcome.message


async def test_download_of_a_missing_file_fails_per_container(kube: KubeCluster, namespace: str, run: Run) -> None:
    await running_pod(kube, namespace, "api-1", containers=2)

    with pytest.raises(StepFailed) as caught:
        await run(Download, alert(namespace, "api-1"), file="/no/such/file")

    text = str(caught.value)
    assert "cat '/no/such/file' exited with code 1 in the container 'api-1'" in text
    assert "in the container 'c1'" in text
    assert "No such file" in text


async def test_download_path_empty_for_this_alert_fails_before_any_exec(namespace: str, run: Run) -> None:
    with pytest.raises(StepFailed, match=r"the file path '\$\{FD_NAME\}' is empty for this alert"):
        await run(Download, alert(namespace, "api-1"), file="${FD_NAME}")


# ---- tcpdump -----------------------------------------------------------------------------------

PCAP_HEADER = bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000")

# A stand-in for tcpdump on kwok's exec PATH (kwok has no container to run the image in): it writes a
# pcap header and its own arguments to the -w file, then captures "forever" like tcpdump until `timeout`
# stops it; `-s 13` makes it fail like a refused capture.
FAKE_TCPDUMP = """\
#!/bin/sh
out=""; prev=""
for a in "$@"; do [ "$prev" = "-w" ] && out="$a"; prev="$a"; done
case " $* " in *" -s 13 "*) echo "tcpdump: refused snaplen" >&2; exit 2;; esac
printf '{header}' > "$out"
printf 'args: %s\\n' "$*" >> "$out"
exec sleep 30
"""


def exists(path: str) -> bool:
    return Path(path).exists()


def install_fake(kube: KubeCluster, name: str, text: str) -> None:
    path = kube.fake_bin / name
    path.write_text(text)
    path.chmod(0o755)


async def test_tcpdump_adds_talons_ephemeral_container_and_copies_the_capture_out(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    install_fake(kube, "tcpdump", FAKE_TCPDUMP.format(header="".join(f"\\{b:03o}" for b in PCAP_HEADER)))
    await running_pod(kube, namespace, "api-1", containers=2)

    outcome = await run(Tcpdump, alert(namespace, "api-1"), duration=1, snaplen=512, image="example.com/tcpdump:4")

    name = outcome.objects["container"]
    assert re.fullmatch(r"falco-talon-tcpdump-[a-z0-9]{5}", name)
    [stored] = (await kube.api.get(f"/api/v1/namespaces/{namespace}/pods/api-1"))["spec"]["ephemeralContainers"]
    assert stored["name"] == name
    assert stored["image"] == "example.com/tcpdump:4"
    assert stored["imagePullPolicy"] == "Always"
    assert stored["command"] == ["sleep", "61"]
    assert stored["stdin"] is True
    assert stored["targetContainerName"] == "api-1"  # the first container
    assert stored["securityContext"] == {"privileged": True, "runAsUser": 0}

    assert outcome.artifact is not None
    assert outcome.artifact.name == "tcpdump.pcap"
    path = f"/tmp/talon-opa-{name}.pcap"
    assert outcome.artifact.data == PCAP_HEADER + f"args: -n -i any -s 512 -w {path}\n".encode()
    assert dict(outcome.artifact.objects) == {"pod": "api-1", "namespace": namespace}
    assert outcome.message == f"the traffic of the pod 'api-1' in the namespace '{namespace}' has been captured for 1s"
    assert not exists(path)  # removed once copied


async def test_tcpdump_failure_fails_the_step_with_its_stderr(kube: KubeCluster, namespace: str, run: Run) -> None:
    install_fake(kube, "tcpdump", FAKE_TCPDUMP.format(header=""))
    await running_pod(kube, namespace, "api-1")

    with pytest.raises(StepFailed, match="the capture exited with code 1 in the container 'falco-talon-tcpdump-"):
        await run(Tcpdump, alert(namespace, "api-1"), duration=1, snaplen=13)


# ---- sysdig ------------------------------------------------------------------------------------

# A stand-in for sysdig on kwok's exec PATH: writes its arguments to the -w file, like a capture would.
FAKE_SYSDIG = """\
#!/bin/sh
out=""; prev=""
for a in "$@"; do [ "$prev" = "-w" ] && out="$a"; prev="$a"; done
printf 'scap %s\\n' "$*" > "$out"
"""


async def give_container_ids(kube: KubeCluster, namespace: str, name: str) -> list[str]:
    """Write runtime ids into the pod's container statuses, as a kubelet does (kwok reports none)."""
    path = f"/api/v1/namespaces/{namespace}/pods/{name}"
    pod = await kube.api.get(path)
    statuses = pod["status"]["containerStatuses"]
    for i, status in enumerate(statuses):
        status["containerID"] = f"containerd://{i}{secrets.token_hex(32)[1:]}"
    await kube.api.patch(path + "/status", {"status": {"containerStatuses": statuses}})
    return [s["containerID"].removeprefix("containerd://")[:12] for s in statuses]


async def test_sysdig_runs_talons_job_on_the_pods_node_and_copies_the_capture_out(
    kube: KubeCluster, namespace: str, run: Run
) -> None:
    install_fake(kube, "sysdig", FAKE_SYSDIG)
    await kube.create_pod(namespace, "api-1", node=NODES[1], containers=2)
    await kube.wait_running(namespace, "app=api-1")
    ids = await give_container_ids(kube, namespace, "api-1")

    outcome = await run(Sysdig, alert(namespace, "api-1"), duration=2, buffer_size=512, image="example.com/sysdig:1")

    name = outcome.objects["job"]
    assert re.fullmatch(r"falco-talon-sysdig-[a-z0-9]{5}", name)
    job = await kube.api.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "falco-talon"
    assert "end-at" in job["metadata"]["annotations"]
    assert (job["spec"]["activeDeadlineSeconds"], job["spec"]["backoffLimit"]) == (65, 1)
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["nodeName"] == NODES[1]  # the alert's pod's node
    [container] = pod_spec["containers"]
    assert (container["name"], container["image"]) == ("falco-talon-sysdig", "example.com/sysdig:1")
    assert container["securityContext"] == {"privileged": True, "runAsUser": 0}
    assert container["volumeMounts"] == [{"name": "host", "mountPath": "/host"}]
    assert pod_spec["volumes"] == [{"name": "host", "hostPath": {"path": "/", "type": ""}}]

    assert outcome.artifact is not None
    assert outcome.artifact.name == "sysdig.scap.gz"
    path = f"/tmp/talon-opa-{name}.scap.gz"
    expected = (
        f"scap --modern-bpf --cri /run/containerd/containerd.sock -M 2 -s 512 -z -w {path} "
        f"container.id in ({','.join(ids)})\n"
    )
    assert outcome.artifact.data == expected.encode()
    assert dict(outcome.artifact.objects) == {"pod": "api-1", "namespace": namespace, "job": name}
    assert not exists(path)


async def test_sysdig_scope_node_needs_no_container_ids(kube: KubeCluster, namespace: str, run: Run) -> None:
    install_fake(kube, "sysdig", FAKE_SYSDIG)
    await running_pod(kube, namespace, "api-1")

    with pytest.raises(StepFailed, match=r"report no container id.*use scope: node"):
        await run(Sysdig, alert(namespace, "api-1"))

    outcome = await run(Sysdig, alert(namespace, "api-1"), scope="node")
    assert outcome.artifact is not None
    assert b"container.id" not in outcome.artifact.data
    assert outcome.artifact.data.startswith(b"scap --modern-bpf --cri /run/containerd/containerd.sock -M 5 -s 2048 ")


async def test_tcpdump_fails_with_the_kubelets_reason_when_its_container_never_runs(
    kube: KubeCluster, namespace: str, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod kwok does not run (no node matches it) keeps its ephemeral container unreported: we report,
    as a kubelet would, that the image cannot be pulled, and the step fails with that reason."""
    monkeypatch.setattr(_capture, "START_SECONDS", 3.0)
    tpl = kube.pod_template("pending")
    tpl["spec"]["nodeSelector"] = {"no-such-label": "x"}
    await kube.api.post(
        f"/api/v1/namespaces/{namespace}/pods",
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pending", **tpl["metadata"]}, "spec": tpl["spec"]},
    )
    path = f"/api/v1/namespaces/{namespace}/pods/pending"

    async def kubelet_says_image_pull_failed() -> None:
        async def added() -> str | None:
            found = (await kube.api.get(path))["spec"].get("ephemeralContainers") or []
            return str(found[0]["name"]) if found else None

        name = await kube.wait_for(added, "the ephemeral container", within=10)
        waiting = {"reason": "ErrImagePull", "message": "pull access denied"}
        status = {
            "ephemeralContainerStatuses": [
                {
                    "name": name,
                    "image": "x",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": waiting},
                }
            ]
        }
        await kube.api.patch(path + "/status", {"status": status})

    async with asyncio.TaskGroup() as tg:
        tg.create_task(kubelet_says_image_pull_failed())
        with pytest.raises(StepFailed, match=r"did not run within 3s \(waiting: ErrImagePull pull access denied\)"):
            await run(Tcpdump, alert(namespace, "pending"), duration=1)
