"""`talon-opa rules check|print`, run as a process on real files: exit codes and messages."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.harness.paths import SEED_RULES

ROOT = Path(__file__).resolve().parents[1]
SEED = SEED_RULES
if not SEED.exists():  # the shared samples, else the copy in examples/ if there is one
    SEED = ROOT / "examples" / "seed-scenarios.yaml"

LINE = re.compile(r"^(?P<where>[^:]+:\d+:\d+): (?P<names>(rule '[^']*'(, )?)?(action '[^']*'(, )?)?(field '[^']*')?): ")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "talon_opa.cli.main", "rules", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_seed_scenarios_are_valid() -> None:
    done = run("check", "-r", str(SEED))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "5 rules valid"


def test_every_problem_is_printed_with_its_place_and_the_exit_code_is_1(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        """\
- action: Label
  actionner: kubernetes:label
  parameters:
    labels:
      suspicious: true
- rule: Shell
  continue: yes
  match:
    priority: ">=Info"
  actions:
    - action: Label
    - action: Kill
      actionner: kubernetes:terminat
"""
    )
    done = run("check", "-r", str(path))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[-1] == "4 problems found: invalid rules"
    assert lines[:-1] == [
        f"{path}:7:13: rule 'Shell', field 'continue': 'continue' setting can be 'true' or 'false' only"
        " (write true or false: 'yes' is not a boolean here)",
        f"{path}:9:15: rule 'Shell', field 'match.priority': incorrect priority '>=Info'"
        " (Talon spells it Informational; write an optional operator (<, <=, >, >=, =) and one of:"
        " Debug, Informational, Notice, Warning, Error, Critical, Alert, Emergency)",
        lines[2],
        lines[3],
    ]
    assert lines[2].startswith(
        f"{path}:5:19: rule 'Shell', action 'Label', field 'parameters.labels[suspicious]': expected a string"
    )
    assert '"true"' in lines[2]
    assert lines[3].startswith(
        f"{path}:13:18: rule 'Shell', action 'Kill', field 'actionner': unknown actionner 'kubernetes:terminat'"
        " (did you mean kubernetes:terminate?"
    )
    assert all(LINE.match(line) for line in lines[:-1])


def test_several_files_merge_in_order(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(SEED.read_text())
    override = tmp_path / "override.yaml"
    override.write_text(
        "- rule: Crypto mining\n  notifiers: [slack]\n- action: Terminate the pod now\n  parameters:\n"
        "    grace_period_seconds: 5\n"
    )
    done = run("check", "-r", str(base), "-r", str(override))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "5 rules valid"
    printed = run("print", "-r", str(base), "-r", str(override))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("---\n")
    rules = yaml.safe_load(printed.stdout)
    assert [r["rule"] for r in rules] == [
        "Crypto mining",
        "Privilege escalation",
        "Shell in a container",
        "Credential access",
        "Data exfiltration",
    ]
    assert rules[0]["notifiers"] == ["slack"]
    assert rules[0]["match"]["priority"] == ">=Warning"  # our fix: the override did not clear it
    assert rules[1]["continue"] == "false"
    assert rules[1]["actions"][0] == {
        "parameters": {"grace_period_seconds": 5, "ignore_daemonsets": True, "ignore_statefulsets": True},
        "action": "Terminate the pod now",
        "actionner": "kubernetes:terminate",
    }
    assert rules[2]["actions"][0]["parameters"]["labels"] == {
        "security.falco.org/reason": "shell",
        "security.falco.org/suspicious": "true",
    }


def test_a_yaml_error_names_file_line_and_column(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(SEED.read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text("- rule: R\n  actions: [\n")
    done = run("check", "-r", str(good), "-r", str(bad))
    assert done.returncode == 1
    assert done.stdout.startswith(f"{bad}:3:1: wrong YAML syntax")


def test_a_bare_dash_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(SEED.read_text() + "\n-\n")
    done = run("check", "-r", str(path))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"{path}:" in done.stdout
    assert "bare '-'" in done.stdout


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    done = run("check", "-r", str(tmp_path / "nope.yaml"))
    assert done.returncode == 1
    assert "cannot read the rules file" in done.stdout


def test_warnings_do_not_fail_the_check(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "- rule: R\n  actions:\n    - action: a\n      actionner: kubernetes:label\n      contexts: [aws]\n"
        "      parameters: {labels: {k: v}}\n"
    )
    done = run("check", "-r", str(path))
    assert done.returncode == 0, done.stdout
    assert f"{path}:5:7: warning: rule 'R', action 'a', field 'contexts':" in done.stdout
    assert "did you mean additional_contexts?" in done.stdout
    assert done.stdout.splitlines()[-1] == "1 rule valid"


def test_print_reports_syntax_problems(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("- rule: R\n  continue: maybe\n  actions: [{action: a, actionner: kubernetes:label}]\n")
    done = run("print", "-r", str(path))
    assert done.returncode == 1
    assert f"{path}:2:13: rule 'R', field 'continue':" in done.stderr
