"""Golden tests of the Rego generated for the seed scenarios, and their plans in a real OPA.

Regenerate the golden files after a deliberate change: UPDATE_GOLDEN=1 pytest tests/test_rego_golden.py
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from talon_opa.catalog import default_registry
from talon_opa.core import binaries
from talon_opa.core.events import decode_alert
from talon_opa.translator.model import RuleSet
from talon_opa.translator.rego import HEADER, generate
from talon_opa.translator.rules import load_ruleset
from tests.harness.paths import SAMPLES
from tests.rego_support import plans, write_bundle

SEED = SAMPLES / "rules" / "seed-scenarios.yaml"
GOLDEN = Path(__file__).parent / "golden" / "seed-scenarios"

pytestmark = pytest.mark.skipif(not SEED.exists(), reason=f"{SEED} not found (set TALON_OPA_SHARED)")


def seed_ruleset() -> RuleSet:
    return load_ruleset([str(SEED)], default_registry())


def test_generated_rego_matches_the_golden_files() -> None:
    files = generate(seed_ruleset())
    if os.environ.get("UPDATE_GOLDEN"):
        for old in GOLDEN.rglob("*"):
            if old.is_file():
                old.unlink()
        for path, text in files.items():
            (GOLDEN / path).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / path).write_text(text)
    golden = {p.relative_to(GOLDEN).as_posix(): p.read_text() for p in GOLDEN.rglob("*") if p.is_file()}
    assert sorted(files) == sorted(golden)
    for path, text in files.items():
        assert text == golden[path], f"{path} differs from the golden file (UPDATE_GOLDEN=1 to accept)"


def test_generated_modules_start_with_the_header_and_pass_fmt_and_strict_check(tmp_path: Path) -> None:
    files = generate(seed_ruleset())
    modules = [text for path, text in files.items() if path.endswith(".rego")]
    assert len(modules) == 5
    assert all(text.splitlines()[0] == HEADER for text in modules)
    root = write_bundle(tmp_path, files)
    opa = binaries.find("opa")
    done = subprocess.run([opa, "fmt", "--fail", "-l", str(root / "talon" / "rules")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([opa, "check", "--strict", "-b", str(root)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


EXPECTED = {
    "cloudtrail-console-login-without-mfa": [],
    "falco-contact-k8s-api-server-from-container": [],
    "falco-detect-crypto-miners-stratum": ["Crypto mining"],
    "falco-detect-release-agent-container-escape": ["Privilege escalation"],
    "falco-drop-and-execute-new-binary-in-container": ["Privilege escalation"],
    "falco-find-aws-credentials-on-host": ["Credential access"],
    "falco-internal-syscall-event-drop": [],
    "falco-netcat-rce-in-container": [],
    "falco-outbound-connection-to-c2-servers": ["Data exfiltration"],
    "falco-outbound-connection-to-miner-pool-ports": ["Crypto mining"],
    "falco-read-sensitive-file-untrusted.iso8601": ["Credential access"],
    "falco-read-sensitive-file-untrusted": ["Credential access"],
    "falco-redirect-stdout-stdin-to-network": [],
    "falco-terminal-shell-in-container": ["Shell in a container"],
    "falcosidekick-k8saudit-attach-exec-pod": [],
    "falcosidekick-terminal-shell-in-container": ["Shell in a container"],
    "k8saudit-attach-exec-pod": [],
    "k8saudit-create-privileged-pod": [],
}


async def test_every_sample_alert_gets_its_plan(tmp_path: Path) -> None:
    names = sorted(p.name.removesuffix(".json") for p in (SAMPLES / "alerts").glob("*.json"))
    assert names == sorted(EXPECTED)
    inputs = [decode_alert((SAMPLES / "alerts" / f"{n}.json").read_bytes()).opa_input() for n in names]
    got = await plans(tmp_path, seed_ruleset(), inputs)
    assert {n: p["matched_rules"] for n, p in zip(names, got, strict=True)} == EXPECTED
    by_name = dict(zip(names, got, strict=True))
    escape = by_name["falco-detect-release-agent-container-escape"]["steps"]
    assert [(s["actionner"], s["continue"]) for s in escape] == [("kubernetes:terminate", False)]
    mining = by_name["falco-detect-crypto-miners-stratum"]["steps"]
    assert [s["actionner"] for s in mining] == ["kubernetes:label", "kubernetes:networkpolicy"]
    assert mining[1]["parameters"]["allow_cidr"] == ["10.0.0.0/8"]
    # parameters merged: the action block's labels + the rule's override + the actionner's defaults
    (shell,) = by_name["falco-terminal-shell-in-container"]["steps"]
    assert shell["parameters"]["labels"] == {
        "security.falco.org/suspicious": "true",
        "security.falco.org/reason": "shell",
    }
    assert shell["parameters"]["level"] == "pod"
    (exfil,) = by_name["falco-outbound-connection-to-c2-servers"]["steps"]
    assert (exfil["ignore_errors"], exfil["continue"], exfil["dry_run"], exfil["output"]) == (True, True, False, None)
