"""`talon-opa rules plan|translate|test` as a user runs them: a subprocess, a real OPA, exact output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from talon_opa.core import binaries
from talon_opa.core.errors import OpaError
from tests.conftest import OpaFactory
from tests.harness import paths

SEED = paths.SEED_RULES
ALERTS = paths.ALERTS

# What each seed action block resolves to (explicit parameters merged over the actionner's defaults).
MARK = {
    "action": "Mark the pod as suspicious",
    "actionner": "kubernetes:label",
    "parameters": {"labels": {"security.falco.org/suspicious": "true"}, "level": "pod"},
    "continue": True,
}
ISOLATE = {
    "action": "Isolate the pod from the network",
    "actionner": "kubernetes:networkpolicy",
    "parameters": {"allow_cidr": ["10.0.0.0/8"], "allow_namespaces": None},
    "continue": True,
}
TERMINATE = {
    "action": "Terminate the pod now",
    "actionner": "kubernetes:terminate",
    "parameters": {
        "grace_period_seconds": 0,
        "ignore_daemonsets": True,
        "ignore_statefulsets": True,
        "ignore_standalone_pods": False,
        "min_healthy_replicas": None,
    },
    "continue": False,
}
LABEL_FOR_INVESTIGATION = {
    "action": "Label for investigation",
    "actionner": "kubernetes:label",
    "parameters": {"labels": {"security.falco.org/investigate": "true"}, "level": "pod"},
    "continue": True,
}


def step(rule: str, action: dict[str, Any], **changes: Any) -> dict[str, Any]:
    s = {"rule": rule, "ignore_errors": False, "dry_run": False, "output": None, "notifiers": [], **action}
    return {**s, **changes}


def plan(rules: list[str], steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"matched_rules": rules, "steps": steps}


NONE = plan([], [])
CRYPTO = plan(["Crypto mining"], [step("Crypto mining", MARK), step("Crypto mining", ISOLATE)])
ESCAPE = plan(["Privilege escalation"], [step("Privilege escalation", TERMINATE)])
SHELL = plan(
    ["Shell in a container"],
    [
        step(
            "Shell in a container",
            MARK,
            parameters={
                "labels": {"security.falco.org/suspicious": "true", "security.falco.org/reason": "shell"},
                "level": "pod",
            },
        )
    ],
)
CREDENTIALS = plan(["Credential access"], [step("Credential access", LABEL_FOR_INVESTIGATION)])
EXFILTRATION = plan(["Data exfiltration"], [step("Data exfiltration", ISOLATE, ignore_errors=True)])

EXPECTED = {
    "cloudtrail-console-login-without-mfa.json": NONE,
    "falco-contact-k8s-api-server-from-container.json": NONE,
    "falco-detect-crypto-miners-stratum.json": CRYPTO,
    "falco-detect-release-agent-container-escape.json": ESCAPE,
    "falco-drop-and-execute-new-binary-in-container.json": ESCAPE,
    "falco-find-aws-credentials-on-host.json": CREDENTIALS,
    "falco-internal-syscall-event-drop.json": NONE,
    "falco-netcat-rce-in-container.json": NONE,
    "falco-outbound-connection-to-c2-servers.json": EXFILTRATION,  # namespace payments
    "falco-outbound-connection-to-miner-pool-ports.json": CRYPTO,
    "falco-read-sensitive-file-untrusted.iso8601.json": CREDENTIALS,
    "falco-read-sensitive-file-untrusted.json": CREDENTIALS,
    "falco-redirect-stdout-stdin-to-network.json": NONE,  # namespace shop: not a sensitive one
    "falco-terminal-shell-in-container.json": SHELL,
    "falcosidekick-k8saudit-attach-exec-pod.json": NONE,
    "falcosidekick-terminal-shell-in-container.json": SHELL,
    "k8saudit-attach-exec-pod.json": NONE,
    "k8saudit-create-privileged-pod.json": NONE,
}


def line(value: object) -> str:
    """OPA's compact JSON: keys sorted, no spaces."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def talon_opa(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "talon_opa.cli.main", *args],
        cwd=binaries.REPO,
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def compact(path: Path) -> str:
    return json.dumps(json.loads(path.read_bytes()))


def test_every_sample_alert_has_the_seed_plan() -> None:
    assert sorted(EXPECTED) == sorted(p.name for p in ALERTS.glob("*.json"))


def test_plan_prints_the_exact_plan_of_each_alert_one_line_each(tmp_path: Path) -> None:
    names = sorted(EXPECTED)
    events = tmp_path / "alerts.jsonl"
    events.write_text("".join(compact(ALERTS / n) + "\n\n" for n in names))  # blank lines are skipped

    done = talon_opa("rules", "plan", "-r", str(SEED), "--event", str(events))

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [line(EXPECTED[n]) for n in names]


@pytest.mark.parametrize("name", ["falco-terminal-shell-in-container.json", "falco-internal-syscall-event-drop.json"])
def test_plan_of_one_pretty_printed_alert_file(name: str) -> None:
    done = talon_opa("rules", "plan", "-r", str(SEED), "--event", str(ALERTS / name))
    assert done.returncode == 0, done.stderr
    assert done.stdout == line(EXPECTED[name]) + "\n"


def test_plan_reads_json_lines_from_stdin() -> None:
    names = ["falco-detect-crypto-miners-stratum.json", "falco-detect-release-agent-container-escape.json"]
    stdin = "".join(compact(ALERTS / n) + "\n" for n in names).encode()
    done = talon_opa("rules", "plan", "-r", str(SEED), "--event", "-", stdin=stdin)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [line(CRYPTO), line(ESCAPE)]


def test_plan_exits_2_naming_every_problem_of_invalid_rules(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "- rule: Unknown actionner\n"
        "  match:\n"
        "    rules: [Terminal shell in container]\n"
        "  actions:\n"
        "    - action: Do it\n"
        "      actionner: kubernetes:nope\n"
        "- rule: Bad parameter\n"
        "  match:\n"
        "    rules: [Terminal shell in container]\n"
        "  actions:\n"
        "    - action: Terminate\n"
        "      actionner: kubernetes:terminate\n"
        "      parameters:\n"
        "        grace_period_seconds: soon\n"
    )
    done = talon_opa("rules", "plan", "-r", str(bad), "--event", str(ALERTS / "falco-terminal-shell-in-container.json"))
    assert done.returncode == 2
    assert done.stdout == ""
    assert "invalid rules" in done.stderr
    assert f"{bad}:6:" in done.stderr  # the unknown actionner
    assert f"{bad}:14:" in done.stderr  # the parameter of the wrong type
    assert "Unknown actionner" in done.stderr
    assert "grace_period_seconds" in done.stderr


def test_plan_exits_2_with_the_reason_for_an_undecodable_alert(tmp_path: Path) -> None:
    events = tmp_path / "alerts.jsonl"
    events.write_text(
        compact(ALERTS / "falco-terminal-shell-in-container.json") + "\n" + '{"rule": ["not", "a", "string"]}\n'
    )
    done = talon_opa("rules", "plan", "-r", str(SEED), "--event", str(events))
    assert done.returncode == 2
    assert done.stdout == ""  # alerts are all decoded before any plan is printed
    assert "alert at line 2 cannot be decoded" in done.stderr
    assert "'rule'" in done.stderr


def test_plan_exits_2_on_a_line_that_is_not_json(tmp_path: Path) -> None:
    events = tmp_path / "alerts.jsonl"
    events.write_text(compact(ALERTS / "falco-terminal-shell-in-container.json") + "\nnot json at all\n")
    done = talon_opa("rules", "plan", "-r", str(SEED), "--event", str(events))
    assert done.returncode == 2
    assert "alert at line 2 cannot be decoded" in done.stderr


def test_translate_writes_a_checked_bundle_and_prints_revision_and_path(tmp_path: Path) -> None:
    out = tmp_path / "bundle.tar.gz"
    done = talon_opa("rules", "translate", "-r", str(SEED), "-o", str(out))
    assert done.returncode == 0, done.stderr
    from talon_opa.translator import bundle

    revision = bundle.read_manifest(out)["revision"]
    assert done.stdout == f"revision {revision} bundle {out}\n"
    again = talon_opa("rules", "translate", "-r", str(SEED), "-o", str(tmp_path / "dir"))
    assert again.stdout == f"revision {revision} bundle {tmp_path / 'dir'}\n"  # same rules, same revision


def user_test(expected_rules: list[str]) -> str:
    from talon_opa.core import events

    alert = events.decode_alert((ALERTS / "falco-terminal-shell-in-container.json").read_bytes(), "application/json")
    return (
        "package talon.user_test\n\n"
        "test_shell_alert_matches if {\n"
        f"\tdata.talon.plan.matched_rules == {json.dumps(expected_rules)}\n"
        f"\t\twith input as {json.dumps(alert.opa_input())}\n"
        "}\n"
    )


def test_rules_test_passes_a_user_test_that_holds(tmp_path: Path) -> None:
    (tmp_path / "shell_test.rego").write_text(user_test(["Shell in a container"]))
    done = talon_opa("rules", "test", "-r", str(SEED), str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout


def test_rules_test_passes_opa_exit_code_through_on_failure(tmp_path: Path) -> None:
    test_file = tmp_path / "shell_test.rego"
    test_file.write_text(user_test(["Crypto mining"]))
    done = talon_opa("rules", "test", "-r", str(SEED), str(test_file))
    assert done.returncode == 2, done.stdout + done.stderr  # opa test's own code for failed tests
    assert "data.talon.user_test.test_shell_alert_matches: FAIL" in done.stdout


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"rule": "a"}', [(1, b'{"rule": "a"}')]),
        (b'{\n  "rule": "a"\n}\n', [(1, b'{\n  "rule": "a"\n}\n')]),  # one pretty-printed object
        (b'{"rule": "a"}\n\n{"rule": "b"}\n', [(1, b'{"rule": "a"}'), (3, b'{"rule": "b"}')]),
        (b'{"rule": "a"}\nnot json\n', [(1, b'{"rule": "a"}'), (2, b"not json")]),
    ],
)
def test_event_file_is_one_json_value_or_json_lines(data: bytes, expected: list[tuple[int, bytes]]) -> None:
    from talon_opa.cli import rules_bundle as cli_bundle

    assert list(cli_bundle.split_alerts(data)) == expected


async def test_a_missing_result_is_an_error_not_an_empty_plan(tmp_path: Path, opa: OpaFactory) -> None:
    from talon_opa.cli import rules_bundle as cli_bundle

    b = tmp_path / "bundle"
    (b / "talon").mkdir(parents=True)
    (b / ".manifest").write_text('{"roots": ["talon"]}')
    (b / "talon" / "other.rego").write_text("package talon.other\n\nx := 1\n")
    (b / "talon" / "odd.rego").write_text('package talon.odd\n\nplan := {"steps": []}\n')
    server = await opa(b)
    async with aiohttp.ClientSession(connector=server.connector()) as http:
        with pytest.raises(OpaError, match=r"no result for data\.talon\.plan"):
            await cli_bundle.decide(http, server.base_url, {"rule": "x"})
        with pytest.raises(OpaError, match="is not a plan: matched_rules is not a list"):
            await cli_bundle.decide(http, server.base_url, {"rule": "x"}, path="/v1/data/talon/odd/plan")


def test_translated_bundle_passes_check_strict_and_is_opa_fmt_clean(tmp_path: Path) -> None:
    from talon_opa.translator import bundle

    out = tmp_path / "seed"
    done = talon_opa("rules", "translate", "-r", str(SEED), "-o", str(out))
    assert done.returncode == 0, done.stderr
    bundle.check_bundle(out)
    assert bundle.run_opa(["fmt", "--list", str(out)], what="opa fmt") == ""


def test_plan_adds_native_rego_rules_after_the_translated_ones(tmp_path: Path) -> None:
    native = tmp_path / "mine"
    native.mkdir()
    (native / "block_c2.rego").write_text(
        "package talon.rules.block_c2\n\n"
        'name := "Block C2 by CIDR"\n\n'
        'match if net.cidr_contains("198.51.100.0/24", input.output_fields["fd.sip"])\n\n'
        'actions := [{"action": "Isolate", "actionner": "kubernetes:networkpolicy", "parameters": {}}]\n'
    )
    (native / "block_c2_test.rego").write_text("package talon.rules.block_c2_test\n\ntest_never_bundled if false\n")
    alert = ALERTS / "falco-outbound-connection-to-c2-servers.json"  # fd.sip 198.51.100.66, namespace payments

    done = talon_opa("rules", "plan", "-r", str(SEED), "--rego", str(native), "--event", str(alert))

    assert done.returncode == 0, done.stderr
    native_action = {"action": "Isolate", "actionner": "kubernetes:networkpolicy", "parameters": {}, "continue": True}
    isolate = step("Block C2 by CIDR", native_action)
    expected = plan(["Data exfiltration", "Block C2 by CIDR"], [*EXFILTRATION["steps"], isolate])
    assert done.stdout == line(expected) + "\n"


def test_plan_prints_held_with_caps(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "- rule: Terminate\n"
        "  match: {rules: [Terminal shell in container]}\n"
        "  actions:\n"
        "    - action: Terminate\n"
        "      actionner: kubernetes:terminate\n"
    )
    cfg = tmp_path / "config.yaml"
    cfg.write_text("caps:\n  protected_namespaces: [payments]\n")
    event = str(ALERTS / "falco-terminal-shell-in-container.json")
    done = talon_opa("rules", "plan", "-r", str(rules), "--event", event, "--caps", str(cfg))
    assert done.returncode == 0, done.stderr
    [step] = json.loads(done.stdout)["steps"]
    assert step["held"] == 'namespace "payments" is protected'
    done = talon_opa("rules", "plan", "-r", str(rules), "--event", event)
    assert done.returncode == 0, done.stderr
    assert "held" not in json.loads(done.stdout)["steps"][0]


def test_plan_marks_the_steps_that_wait_for_approval_with_the_example_config(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "approvals"
    event = tmp_path / "alert.json"
    alert = json.loads((ALERTS / "falco-terminal-shell-in-container.json").read_text())
    alert["output_fields"]["k8s.ns.name"] = "payments"
    event.write_text(json.dumps(alert))
    rules = str(example / "rules.yaml")
    done = talon_opa("rules", "plan", "-r", rules, "--event", str(event), "--caps", str(example / "config.yaml"))
    assert done.returncode == 0, done.stderr
    steps = json.loads(done.stdout)["steps"]
    assert [(s["action"], s.get("approval")) for s in steps] == [
        ("Mark the pod", None),
        ("Terminate Pod", {"window_seconds": 300}),
    ]
