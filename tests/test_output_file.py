"""local:file: Talon's file names made safe, written whole, 0600, never outside the folder nor over a file."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from talon_opa.core.errors import StepFailed
from talon_opa.outputs import file
from talon_opa.outputs.file import File, file_name, write_new
from talon_opa.plugins.clients import Clients
from talon_opa.plugins.params import NoParams
from talon_opa.plugins.runtime import Artifact, Outcome

NOW = dt.datetime(2025, 2, 5, 10, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("name", "objects", "expected"),
    [
        # Talon's own example (reference §6)
        ("/etc/passwd", {"namespace": "default", "pod": "nginx"}, "2025-02-05T10-00-00Z_default_nginx__etc_passwd"),
        ("log", {"namespace": "default", "pod": "nginx", "hostname": "h"}, "2025-02-05T10-00-00Z_default_nginx_log"),
        ("capture.pcap", {"hostname": "node-1"}, "2025-02-05T10-00-00Z_node-1_capture.pcap"),
        # neither: every object but `file`, sorted by key, each followed by `_`
        ("x", {"pod": "p", "file": "ignored", "bucket": "b"}, "2025-02-05T10-00-00Z_b_p_x"),
        ("x", {}, "2025-02-05T10-00-00Z_x"),
        # a pod alone is not a pod and namespace
        ("logs.txt", {"pod": "api-1"}, "2025-02-05T10-00-00Z_api-1_logs.txt"),
        # alert values never leave the folder nor hide: `/`, `..`-walks, spaces, NUL and non-ASCII become `_`
        ("../../x", {"namespace": "..", "pod": "../../etc"}, "2025-02-05T10-00-00Z_.._.._.._etc_.._.._x"),
        ("a b\x00c", {"namespace": "ns", "pod": "pöd;rm -rf"}, "2025-02-05T10-00-00Z_ns_p_d_rm_-rf_a_b_c"),
    ],
)
def test_file_name_is_talons_key_in_safe_characters(name: str, objects: dict[str, str], expected: str) -> None:
    assert file_name(Artifact(name, b"data", objects), NOW) == expected


def test_a_long_file_name_is_cut_to_the_file_systems_limit() -> None:
    name = file_name(Artifact("n" * 400, b"d", {"namespace": "ns", "pod": "p" * 300}), NOW)
    assert len(name.encode()) == file.MAX_NAME
    assert name.startswith("2025-02-05T10-00-00Z_ns_ppp")


def names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


async def store(destination: str, artifact: Artifact) -> Outcome:
    plugin = File(Clients(File.spec.name, {}), NoParams())
    return await plugin.store(artifact, File.spec.decode({"destination": destination}))


async def test_store_writes_the_artifact_0600_inside_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "artifacts"
    folder.mkdir()
    artifact = Artifact("../../../../etc/cron.d/x", b"logs\n", {"namespace": "..", "pod": "../../etc"})

    outcome = await store(f"{folder}/", artifact)

    [written] = [folder / name for name in names(folder)]  # one file, no temporary left, nothing elsewhere
    assert names(tmp_path) == ["artifacts"]
    assert written.read_bytes() == b"logs\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert written.name.endswith("_.._.._.._etc_.._.._.._.._etc_cron.d_x")
    assert outcome.status == "success"
    assert outcome.message == f"the file '{written.name}' has been copied to '{written}'"
    assert dict(outcome.objects) == {"file": written.name, "destination": str(written)}


async def test_store_expands_environment_variables_in_the_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.setenv("TALON_TEST_ARTIFACTS", str(tmp_path))

    outcome = await store("${TALON_TEST_ARTIFACTS}/sub", Artifact("log", b"x", {"hostname": "h"}))

    assert Path(outcome.objects["destination"]).parent == tmp_path / "sub"


@pytest.mark.parametrize("make", ["missing", "a file"])
async def test_store_into_a_missing_folder_fails_naming_it(tmp_path: Path, make: str) -> None:
    destination = tmp_path / "nope"
    if make == "a file":
        destination.write_text("")

    with pytest.raises(StepFailed) as caught:
        await store(str(destination), Artifact("log", b"x"))

    assert caught.value.args[0] == f"folder '{destination}' does not exist"
    assert "create the folder" in caught.value.hint


def test_write_new_never_replaces_a_file_nor_follows_a_link(tmp_path: Path) -> None:
    folder, outside = tmp_path / "artifacts", tmp_path / "outside"
    folder.mkdir()
    outside.write_bytes(b"keep")
    (folder / "x").write_bytes(b"first")
    (folder / "x.1").symlink_to(outside)

    path = write_new(folder, "x", b"second")

    assert path == folder / "x.2"
    assert path.read_bytes() == b"second"
    assert (folder / "x").read_bytes() == b"first"
    assert outside.read_bytes() == b"keep"
    assert sorted(p.name for p in folder.iterdir()) == ["x", "x.1", "x.2"]


async def test_store_does_its_file_io_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real = file.write_new

    def spy(folder: Path, name: str, data: bytes) -> Path:
        threads.append(threading.get_ident())
        return real(folder, name, data)

    monkeypatch.setattr(file, "write_new", spy)
    await store(str(tmp_path), Artifact("log", b"x"))

    assert threads
    assert threads[0] != threading.get_ident()


def test_a_refused_write_fails_with_the_os_reason_and_leaves_nothing(tmp_path: Path) -> None:
    """The process may write files of 64 KiB at most (RLIMIT_FSIZE): the OS refuses the rest (EFBIG)."""
    code = f"""
import asyncio, resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
from talon_opa.core.errors import StepFailed
from tests.test_output_file import store
from talon_opa.plugins.runtime import Artifact
try:
    asyncio.run(store({str(tmp_path)!r}, Artifact("big", b"x" * 1_000_000)))
except StepFailed as e:
    print(e.args[0])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)

    assert done.stdout.strip() == f"cannot write the artifact into '{tmp_path}': File too large"
    assert list(tmp_path.iterdir()) == []
