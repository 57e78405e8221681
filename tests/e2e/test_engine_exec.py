"""The exec-based and capture actionners through the running engine: real rules → real OPA → the shipped
actionners against a real API server (kwok nodes), as the ServiceAccount bound to exactly the ClusterRole
`talon-opa rbac` generates for these rules. Each step has its span (with the command's exit code and
output tails) and is counted; each artifact reaches the step's output (a scripted local:file, since the
real one lands separately) and its `write output` span."""

from __future__ import annotations

import asyncio
import secrets
import sys
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from talon_opa.actionners.kubernetes import download, exec, log, script, sysdig, tcpdump
from talon_opa.core.kube import KubeConfig
from talon_opa.plugins.registry import Registry
from tests.e2e.engine_harness import running_engine, shell_alert
from tests.e2e.engine_plugins import SCRIPT, Recorder, ScriptedFile
from tests.e2e.test_actionners_exec import FAKE_SYSDIG, FAKE_TCPDUMP, append_logs, install_fake
from tests.harness.kube import KubeCluster
from tests.harness.paths import REPO

RULES = """\
- rule: Shell in a container
  match:
    rules: [Terminal shell in container]
  notifiers: [recorder]
  actions:
    - action: Echo the command line
      actionner: kubernetes:exec
      parameters:
        command: printf '%s' "${PROC_CMDLINE}"
    - action: Collect
      actionner: kubernetes:script
      parameters:
        script: |
          echo "pod $K8S_POD_NAME"
          echo "rule ${RULE}"
    - action: Get the logs
      actionner: kubernetes:log
      parameters: {tail_lines: 2}
      output: {target: local:file, parameters: {destination: /var/artifacts}}
    - action: Download the binary
      actionner: kubernetes:download
      parameters: {file: "${FD_NAME}"}
      output: {target: local:file, parameters: {destination: /var/artifacts}}
    - action: Capture the traffic
      actionner: kubernetes:tcpdump
      continue: true
      parameters: {duration: 1}
      output: {target: local:file, parameters: {destination: /var/artifacts}}
    - action: Capture the syscalls
      actionner: kubernetes:sysdig
      continue: true
      parameters: {duration: 1, scope: node}
      output: {target: local:file, parameters: {destination: /var/artifacts}}
    - action: Fail on purpose
      actionner: kubernetes:exec
      ignore_errors: true
      parameters:
        command: echo "cannot kill $PROC_NAME" >&2; exit 4
"""

ACTIONNERS = ("exec", "script", "log", "download", "tcpdump", "sysdig")


def registry() -> Registry:
    return Registry.of(
        exec.Exec, script.Script, log.Log, download.Download, tcpdump.Tcpdump, sysdig.Sysdig, ScriptedFile, Recorder
    )


async def engine_account(kube: KubeCluster, namespace: str, rules: Path) -> KubeConfig:
    """Exactly the ClusterRole `talon-opa rbac -r rules.yaml` prints."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "talon_opa.cli.main", "rbac", "-r", str(rules), cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return await kube.service_account_with_role(namespace, "talon-opa", yaml.safe_load(out)["rules"])


def attributes(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_every_exec_and_capture_actionner_acts_traced_and_counted(
    kube: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    SCRIPT.reset()
    install_fake(kube, "tcpdump", FAKE_TCPDUMP.format(header="pcap"))
    install_fake(kube, "sysdig", FAKE_SYSDIG)
    await kube.create_pod(namespace, "api-1")
    await kube.wait_running(namespace, "app=api-1")
    tag = secrets.token_hex(4)
    append_logs(kube, [f"{tag} before", f"{tag} shell spawned"])
    binary = kube.kwok_workdir / f"dropped-{tag}"
    binary.write_bytes(b"\x7fELF\x00\x01binary")
    marker = kube.kwok_workdir / f"pwned-{tag}"
    hostile = f"bash -c '$(touch {marker})'; `touch {marker}`"
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    account = await engine_account(kube, namespace, rules)
    spans = InMemorySpanExporter()

    async with running_engine(tmp_path, RULES, registry=registry(), kube_config=account, span_exporter=spans) as e:
        alert = shell_alert("api-1", namespace)
        alert["output_fields"].update({"proc.cmdline": hostile, "fd.name": str(binary)})
        reply = await e.post(json_body=alert)
        assert reply.status == 200
        await e.drained()

        for name in ACTIONNERS:
            assert (
                await e.metric(
                    "falcosecurity_falco_talon_actions_total", actionner=f"kubernetes:{name}", status="success"
                )
                == 1
            ), name
        failures = await e.metric("falcosecurity_falco_talon_actions_total", action="Fail on purpose", status="failure")
        assert failures == 1
        assert await e.metric("falcosecurity_falco_talon_outputs_total", target="local:file", status="success") == 4

    steps = sorted((s for s in spans.get_finished_spans() if s.name == "run action"), key=lambda s: s.start_time or 0)
    assert [attributes(s)["talon.action"] for s in steps] == [
        "Echo the command line",
        "Collect",
        "Get the logs",
        "Download the binary",
        "Capture the traffic",
        "Capture the syscalls",
        "Fail on purpose",
    ]
    assert {s.context.trace_id for s in steps} == {int(reply.body["trace_id"], 16)}
    echo, collect, *_, failed = steps
    assert attributes(echo)["talon.object.stdout"] == hostile  # verbatim, and it never ran:
    assert not marker.exists()
    assert attributes(echo)["talon.object.exit_code"] == "0"
    assert attributes(echo)["talon.object.variables"] == "PROC_CMDLINE"
    assert attributes(collect)["talon.result"] == "pod api-1\nrule Terminal shell in container\n"
    assert all(s.status.status_code.name == "OK" for s in steps[:-1])
    assert failed.status.status_code.name == "ERROR"
    assert "the command exited with code 4 in the container 'api-1': cannot kill bash" in str(failed.status.description)

    artifacts = {artifact.name: artifact.data for _, artifact in SCRIPT.artifacts}
    assert artifacts["log"] == f"{tag} before\n{tag} shell spawned\n".encode()
    assert artifacts[str(binary)] == b"\x7fELF\x00\x01binary"
    assert artifacts["tcpdump.pcap"].startswith(b"pcapargs: -n -i any -s 0 -w /tmp/talon-opa-falco-talon-tcpdump-")
    assert artifacts["sysdig.scap.gz"].startswith(b"scap --modern-bpf --cri /run/containerd/containerd.sock -M 1 ")
    writes = [s for s in spans.get_finished_spans() if s.name == "write output"]
    assert len(writes) == 4
    assert [n.status for n in SCRIPT.notes if n.stage == "action"] == ["success"] * 6 + ["failure"]
