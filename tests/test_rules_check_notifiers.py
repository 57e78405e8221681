"""`talon-opa rules check -c config.yaml`: a notifier a rule names without its settings is warned about,
at the rule's `notifiers:` entry, naming the config key (the server would refuse to start)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RULES = """\
- rule: Shell
  match:
    rules: [Terminal shell in container]
  notifiers: [slack, k8sevents, smtp, loki]
  actions:
    - action: Label
      actionner: kubernetes:label
      parameters: {labels: {a: b}}
- rule: Shell again
  match:
    rules: [Terminal shell in container]
  notifiers: [slack]
  actions:
    - action: Label again
      actionner: kubernetes:label
      parameters: {labels: {a: b}}
"""

CONFIG = """\
notifiers:
  smtp:
    host_port: smtp.example.com
    from: talon@example.com
    to: secops@example.com
    password: hunter2-smtp-secret
  loki:
    url: http://loki:3100
"""


def check(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    (tmp_path / "config.yaml").write_text(CONFIG)
    return subprocess.run(
        [sys.executable, "-m", "talon_opa.cli.main", "rules", "check", "-r", "rules.yaml", *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_with_a_config_unset_and_invalid_notifier_settings_are_warned_about_once(tmp_path: Path) -> None:
    done = check(tmp_path, "-c", "config.yaml")

    assert done.returncode == 0, done.stdout + done.stderr  # warnings: the rules themselves are valid
    assert done.stdout.splitlines() == [
        "rules.yaml:4:15: warning: rule 'Shell', field 'notifiers': notifier 'slack' is not configured "
        "(notifiers.slack.webhook_url not set): the server will refuse to start "
        "(set notifiers.slack.webhook_url in the config file)",
        "rules.yaml:4:33: warning: rule 'Shell', field 'notifiers': settings of notifier 'smtp' are invalid: "
        "host_port: 'smtp.example.com' is not host:port: the server will refuse to start "
        "(fix notifiers.smtp in the config file)",
        "2 rules valid",
    ]


def test_without_a_config_notifier_settings_are_not_checked(tmp_path: Path) -> None:
    done = check(tmp_path)
    assert done.returncode == 0
    assert done.stdout.splitlines() == ["2 rules valid"]
