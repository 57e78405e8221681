"""The real `helm` (built by `tools/build helm`) over the repo's chart: lint and template, hermetically
(helm's config, cache and data folders in a private temporary folder, no repositories, no cluster)."""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from talon_opa.core import binaries
from tests.harness.paths import REPO

CHART = REPO / "charts" / "talon-opa"
_HOME = Path(tempfile.mkdtemp(prefix="talon-opa-helm-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)


def helm(*args: str, check: bool = True, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run helm; with `kubeconfig`, against that cluster (else helm has no cluster)."""
    env = {
        "HOME": str(_HOME),
        "PATH": "/usr/bin:/bin",
        "HELM_CONFIG_HOME": str(_HOME / "config"),
        "HELM_CACHE_HOME": str(_HOME / "cache"),
        "HELM_DATA_HOME": str(_HOME / "data"),
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    done = subprocess.run(
        [binaries.find("helm"), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {done.returncode}:\n{done.stderr}\n{done.stdout}")
    return done


def _values_file(values: Mapping[str, Any]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="values-", dir=_HOME, delete=False) as f:
        yaml.safe_dump(dict(values), f)
        return f.name


def lint(values: Mapping[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    return helm("lint", "--strict", str(CHART), "-f", _values_file(values or {}), check=False)


@dataclass(frozen=True)
class Rendered:
    """The objects `helm template` rendered, in order."""

    objects: list[dict[str, Any]]

    def kinds(self) -> list[str]:
        return [o["kind"] for o in self.objects]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"{len(found)} {kind} objects named *{name_suffix}: {[o['metadata'] for o in found]}"
        return found[0]

    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    def containers(self) -> dict[str, dict[str, Any]]:
        """The pod's containers and init containers (the OPA sidecar is a native sidecar), by name."""
        pod = self.deployment()["spec"]["template"]["spec"]
        return {c["name"]: c for c in [*pod.get("initContainers", []), *pod["containers"]]}

    def config_yaml(self) -> str:
        data: dict[str, str] = self.one("ConfigMap", "-config")["data"]
        return data["config.yaml"]


def template(values: Mapping[str, Any] | None = None, *, release: str = "talon", namespace: str = "falco") -> Rendered:
    """`helm template` with these values: every rendered object."""
    done = helm("template", release, str(CHART), "--namespace", namespace, "-f", _values_file(values or {}))
    return Rendered([d for d in yaml.safe_load_all(done.stdout) if d])
