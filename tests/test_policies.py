"""The hand-written Rego library (policies/) and the native examples pass OPA's own gates."""

from __future__ import annotations

import json
import subprocess

import pytest

from talon_opa.core import binaries
from tests.harness.paths import REPO
from tests.rego_support import POLICIES

NATIVE_EXAMPLES = REPO / "examples" / "native"


def opa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binaries.find("opa"), *args], capture_output=True, text=True, check=False, timeout=120)


@pytest.mark.parametrize("folder", [POLICIES, NATIVE_EXAMPLES], ids=["policies", "examples-native"])
def test_rego_is_opa_fmt_clean(folder: object) -> None:
    done = opa("fmt", "--fail", "-l", str(folder))
    assert done.returncode == 0, f"not formatted: {done.stdout}{done.stderr}"


def test_rego_passes_strict_check() -> None:
    done = opa("check", "--strict", str(POLICIES), str(NATIVE_EXAMPLES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_library_tests_pass_with_coverage_of_at_least_90_percent() -> None:
    done = opa("test", "--coverage", str(POLICIES))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    report = json.loads(done.stdout)
    uncovered = {f: r.get("not_covered") for f, r in report["files"].items() if r.get("not_covered")}
    assert report["coverage"] >= 90, f"coverage {report['coverage']}%, not covered: {uncovered}"


def test_native_examples_tests_pass() -> None:
    done = opa("test", str(POLICIES), str(NATIVE_EXAMPLES))
    assert done.returncode == 0, done.stdout + done.stderr
