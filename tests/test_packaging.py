"""The distribution a user installs (not this checkout) carries what the engine needs at run time."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_the_rego_library_the_bundles_are_built_with(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        check=True,
        cwd=tmp_path,
    )
    [wheel] = tmp_path.glob("talon_opa-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    library = {p.relative_to(REPO).as_posix() for p in (REPO / "talon_opa" / "policies").rglob("*.rego")}
    assert library, "the Rego library moved"
    assert library <= names, sorted(library - names)
