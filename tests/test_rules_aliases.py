"""Rules written for Talon's first docs generation load unchanged: `kubernetes:labelize`, the `allow`
parameter, the `name:`/`action:` rule shape and camelCase parameter names, each with a warning that
names today's spelling. Run as a user runs them: `talon-opa rules check|plan` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from talon_opa.core import binaries

# The rules example of Talon's first README (falcosecurity/falco-talon, README.md "Rules" section).
FIRST_README = """\
- name: Rule 0
  match:
    rules:
      - Terminal shell in container
      - Contact K8S API Server From Container
  action:
    name: kubernetes:terminate
    parameters:
      gracePeriodSeconds: 3
- name: Rule 1
  match:
    priority: "<Critical"
  action:
    name: kubernetes:labelize
    parameters:
      labels:
        suspicious: "true"
  continue: false
"""

# The second generation (docs site): action blocks, `kubernetes:labelize`, networkpolicy's `allow`.
SECOND_DOCS = """\
- action: Labelize the pod
  actionner: kubernetes:labelize
  parameters:
    labels:
      suspicious: "true"

- action: Create a network policy
  actionner: kubernetes:networkpolicy
  parameters:
    allow:
      - 192.168.1.0/24
      - 172.17.0.0/16

- rule: Suspicious outbound connection
  match:
    rules:
      - Detect outbound connections to common miner pool ports
  actions:
    - action: Labelize the pod
    - action: Create a network policy
"""


def talon_opa(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "talon_opa.cli.main", *args],
        cwd=binaries.REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


def test_the_first_readme_example_passes_rules_check_with_warnings_naming_the_new_spelling(tmp_path: Path) -> None:
    rules = write(tmp_path, FIRST_README)

    done = talon_opa("rules", "check", "-r", str(rules))

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert f"{rules}:1:3: warning: rule 'Rule 0', field 'name': first-generation rule syntax" in out
    assert "write '- rule: Rule 0'" in out
    assert (
        f"{rules}:14:11: warning: rule 'Rule 1', action 'Rule 1', field 'actionner': "
        "'kubernetes:labelize' is the old name of 'kubernetes:label' (write 'actionner: kubernetes:label')"
    ) in out
    assert (
        f"{rules}:9:7: warning: rule 'Rule 0', action 'Rule 0', field 'parameters.gracePeriodSeconds': unknown "
        "parameter 'gracePeriodSeconds' of kubernetes:terminate is ignored (did you mean grace_period_seconds?"
    ) in out
    assert "cannot run" not in out


def test_the_first_readme_example_plans_like_todays_rules(tmp_path: Path) -> None:
    rules = write(tmp_path, FIRST_README)
    alert = {"rule": "Some rule", "priority": "Warning", "output": "x", "output_fields": {}}

    done = talon_opa("rules", "plan", "-r", str(rules), "--event", "-", stdin=json.dumps(alert))

    assert done.returncode == 0, done.stdout + done.stderr
    plan = json.loads(done.stdout)
    assert plan["matched_rules"] == ["Rule 1"]
    [step] = plan["steps"]
    assert (step["rule"], step["action"], step["actionner"]) == ("Rule 1", "Rule 1", "kubernetes:label")
    assert step["parameters"]["labels"] == {"suspicious": "true"}


def test_second_generation_names_are_read_as_todays(tmp_path: Path) -> None:
    rules = write(tmp_path, SECOND_DOCS)
    alert = {"rule": "Detect outbound connections to common miner pool ports", "output": "y"}

    check = talon_opa("rules", "check", "-r", str(rules))
    done = talon_opa("rules", "plan", "-r", str(rules), "--event", "-", stdin=json.dumps(alert))

    assert check.returncode == 0, check.stdout + check.stderr
    assert (
        "field 'parameters.allow': parameter 'allow' of kubernetes:networkpolicy is the old name of 'allow_cidr' "
        "(write 'allow_cidr:')"
    ) in check.stdout + check.stderr
    assert "'kubernetes:labelize' is the old name of 'kubernetes:label'" in check.stdout + check.stderr
    steps = json.loads(done.stdout)["steps"]
    assert [s["actionner"] for s in steps] == ["kubernetes:label", "kubernetes:networkpolicy"]
    assert steps[1]["parameters"]["allow_cidr"] == ["192.168.1.0/24", "172.17.0.0/16"]
    assert "allow" not in steps[1]["parameters"]


def test_allow_never_replaces_an_explicit_allow_cidr(tmp_path: Path) -> None:
    rules = write(
        tmp_path,
        SECOND_DOCS.replace("    allow:\n", "    allow_cidr: [10.0.0.0/8]\n    allow:\n"),
    )
    alert = {"rule": "Detect outbound connections to common miner pool ports", "output": "y"}

    done = talon_opa("rules", "plan", "-r", str(rules), "--event", "-", stdin=json.dumps(alert))

    assert json.loads(done.stdout)["steps"][1]["parameters"]["allow_cidr"] == ["10.0.0.0/8"]
