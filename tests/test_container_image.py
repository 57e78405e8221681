"""The container image definition (Dockerfile), checked statically: no Docker engine runs here, so the
image is not built in the tests; its pins must be the ones the project builds and tests with."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from tests.harness.paths import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if re.match(r"^[A-Z_]+=", line))
    return {k: v for k, v in pairs}


def _arg(name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.M)
    assert m, f"Dockerfile: no `ARG {name}=...`"
    return m.group(1)


def _pins(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)$", line.strip())
        if m:
            out[re.sub(r"\[.*\]", "", m.group(1)).lower().replace("_", "-")] = m.group(2)
    return out


def test_opa_in_the_image_is_tools_pinned_opa_built_the_same_way() -> None:
    versions = _env_file(REPO / "tools" / "versions.env")
    assert _arg("OPA_VERSION") == versions["OPA_VERSION"]
    build = (REPO / "tools" / "build").read_text()
    assert 'go install -trimpath -ldflags "-s -w" "github.com/open-policy-agent/opa@$OPA_VERSION"' in build
    assert 'go install -trimpath -ldflags "-s -w" "github.com/open-policy-agent/opa@${OPA_VERSION}"' in DOCKERFILE
    assert "CGO_ENABLED=0 GOTOOLCHAIN=local" in DOCKERFILE


def test_python_and_go_of_the_image_are_the_ones_the_readme_requires() -> None:
    readme = (REPO / "README.md").read_text()
    m = re.search(r"Requirements: Python (\d+\.\d+), Go (\d+\.\d+)", readme)
    assert m, "README.md: the Requirements line moved"
    python_mm, go_mm = m.groups()
    assert _arg("PYTHON_VERSION").startswith(python_mm + ".")
    assert _arg("GO_VERSION").startswith(go_mm + ".")
    assert PYPROJECT["tool"]["mypy"]["python_version"] == python_mm
    assert PYPROJECT["project"]["requires-python"] == f">={python_mm}"
    # the Rego library ships inside the package (tests/test_packaging.py): nothing to copy beside it
    assert "COPY policies" not in DOCKERFILE


def test_the_package_is_installed_with_the_pinned_constraints() -> None:
    assert re.search(r"pip install -c constraints\.txt \.$", DOCKERFILE, re.M)
    constraints = _pins((REPO / "constraints.txt").read_text().splitlines())
    runtime = _pins(PYPROJECT["project"]["dependencies"])
    assert runtime, "pyproject.toml: the runtime dependencies are pinned with =="
    for name, version in runtime.items():
        assert constraints.get(name) == version, f"{name}: pyproject {version}, constraints {constraints.get(name)}"
    # nothing else is pip-installed in the image, so nothing unpinned
    steps = [line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#")]
    assert sum("pip install" in line for line in steps) == 1


def test_every_copied_path_exists_and_is_not_docker_ignored() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip()}
    sources = []
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
        assert src.split("/")[0] not in ignored, f"{src} is in .dockerignore"


def test_image_user_version_and_command_fit_the_chart() -> None:
    values = yaml.safe_load((REPO / "charts" / "talon-opa" / "values.yaml").read_text())
    chart = yaml.safe_load((REPO / "charts" / "talon-opa" / "Chart.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    assert f"USER {uid}:{values['podSecurityContext']['runAsGroup']}" in DOCKERFILE
    assert chart["appVersion"] == PYPROJECT["project"]["version"]  # the chart's default image tag
    assert 'ENTRYPOINT ["talon-opa"]' in DOCKERFILE
    assert 'CMD ["server", "-c", "/etc/talon-opa/config/config.yaml"]' in DOCKERFILE
    assert "TALON_OPA_OPA_BIN=/usr/local/bin/opa" in DOCKERFILE  # core/binaries.py finds OPA by it


def test_the_build_keeps_what_a_server_start_compiles_after_the_install() -> None:
    """The compile table is written where the installed package's bytecode is, by the Python that runs it
    (tests/e2e/test_engine_startup.py checks that a start then compiles nothing new)."""
    install = DOCKERFILE.index("/opt/talon-opa/bin/pip install -c constraints.txt .")
    table = DOCKERFILE.index("RUN /opt/talon-opa/bin/python -m talon_opa.cli.compile_table")
    assert install < table < DOCKERFILE.index("\nFROM ", install)  # in the build stage, which the image copies
    assert "COPY --from=build /opt/talon-opa /opt/talon-opa" in DOCKERFILE
