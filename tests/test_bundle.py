"""Bundles: layout, manifest, content-hash revision, `opa check --strict`, signing and tamper refusal (real OPA)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from talon_opa.core import binaries
from talon_opa.core.errors import OpaError
from talon_opa.engine import reload
from talon_opa.opa.process import OpaProcess
from talon_opa.translator import bundle
from tests.harness import paths

# A tiny stand-in for the library and the generated code: a plan-shaped value from a data table.
LIBRARY_PLAN = """package talon

plan := {"matched_rules": matched, "steps": steps}

matched := [r.name | some r in data.talon.table.rules; input.rule in r.rules]

steps := [s |
\tsome r in data.talon.table.rules
\tinput.rule in r.rules
\tsome s in r.steps
]
"""
LIBRARY_TEST = """package talon_test

test_plan_of_unknown_rule_is_empty if data.talon.plan == {"matched_rules": [], "steps": []} with input as {"rule": "x"}
"""
GENERATED = {
    "talon/table/data.json": json.dumps(
        {
            "rules": [
                {
                    "name": "Shell in a container",
                    "rules": ["Terminal shell in container"],
                    "steps": [{"rule": "Shell in a container", "action": "Mark", "actionner": "kubernetes:label"}],
                }
            ]
        }
    ),
    "talon/rules/generated.rego": "# generated, do not edit\npackage talon.rules.generated\n\ncount_rules := 1\n",
}
SHELL_PLAN = {
    "matched_rules": ["Shell in a container"],
    "steps": [{"rule": "Shell in a container", "action": "Mark", "actionner": "kubernetes:label"}],
}


@pytest.fixture
def library(tmp_path: Path) -> Path:
    lib = tmp_path / "policies"
    (lib / "talon").mkdir(parents=True)
    (lib / "talon" / "plan.rego").write_text(LIBRARY_PLAN)
    (lib / "talon" / "plan_test.rego").write_text(LIBRARY_TEST)
    return lib


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An RSA key pair as PEM files: (private, public)."""
    d = tmp_path_factory.mktemp("keys")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = d / "private.pem", d / "public.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            if f is not None:
                out[m.name.lstrip("/")] = f.read()
        return out


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo("/" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


async def plan_of(opa: OpaProcess, alert: dict[str, object]) -> object:
    async with (
        aiohttp.ClientSession(connector=opa.connector()) as http,
        http.post(
            f"{opa.base_url}/v1/data/talon/plan",
            json={"input": alert},
            headers=opa.headers(),
            timeout=aiohttp.ClientTimeout(10),
        ) as r,
    ):
        assert r.status == 200, await r.text()
        return (await r.json())["result"]


def test_directory_bundle_has_manifest_library_and_native_rego(tmp_path: Path, library: Path) -> None:
    native = tmp_path / "mine"
    native.mkdir()
    (native / "allow.rego").write_text('package talon.rules.mine\n\nmatch if input.rule == "x"\n')
    (native / "allow_test.rego").write_text("package talon.rules.mine_test\n\ntest_x if true\n")

    out = tmp_path / "out"
    revision = bundle.build_bundle(GENERATED, out, library=library, native=[native])

    man = json.loads((out / ".manifest").read_text())
    assert man == {"revision": revision, "roots": ["talon"], "rego_version": 1}
    assert len(revision) == 64
    found = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert found == [
        ".manifest",
        "native/mine/allow.rego",
        "talon/native/data.json",
        "talon/plan.rego",
        "talon/rules/generated.rego",
        "talon/table/data.json",
    ]
    assert bundle.read_manifest(out) == man
    assert json.loads((out / "talon" / "native" / "data.json").read_text()) == {"mine": True}


def test_tarball_bundle_keeps_the_content_revision(tmp_path: Path, library: Path) -> None:
    out = tmp_path / "b.tar.gz"
    revision = bundle.build_bundle(GENERATED, out, library=library)
    members = tar_members(out)
    assert json.loads(members[".manifest"]) == {"revision": revision, "roots": ["talon"], "rego_version": 1}
    assert "talon/plan.rego" in members
    assert "talon/plan_test.rego" not in members
    assert bundle.read_manifest(out)["revision"] == revision


def test_revision_is_a_content_hash(tmp_path: Path, library: Path) -> None:
    first = bundle.build_bundle(GENERATED, tmp_path / "a", library=library)
    again = bundle.build_bundle(dict(reversed(GENERATED.items())), tmp_path / "a.tar.gz", library=library)
    assert first == again
    changed = {**GENERATED, "talon/rules/generated.rego": GENERATED["talon/rules/generated.rego"] + "\nx := 2\n"}
    assert bundle.build_bundle(changed, tmp_path / "c", library=library) != first
    # the library is part of the content too
    (library / "talon" / "extra.rego").write_text("package talon.extra\n\ny := 1\n")
    assert bundle.build_bundle(GENERATED, tmp_path / "d", library=library) != first


def test_rebuilding_replaces_a_previous_bundle_but_never_a_foreign_folder(tmp_path: Path, library: Path) -> None:
    out = tmp_path / "out"
    bundle.build_bundle({**GENERATED, "talon/old.rego": "package talon.old\n\nz := 1\n"}, out, library=library)
    bundle.build_bundle(GENERATED, out, library=library)
    assert not (out / "talon" / "old.rego").exists()

    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(bundle.BundleError, match="not a bundle"):
        bundle.build_bundle(GENERATED, foreign, library=library)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_check_strict_passes_on_the_result_and_reports_opa_message(tmp_path: Path, library: Path) -> None:
    out = tmp_path / "ok.tar.gz"
    bundle.build_bundle(GENERATED, out, library=library, check=False)
    bundle.check_bundle(out)  # passes

    unused = {**GENERATED, "talon/rules/bad.rego": "package talon.rules.bad\n\nf(x) := 1\n"}
    with pytest.raises(bundle.BundleError) as e:
        bundle.build_bundle(unused, tmp_path / "bad", library=library)
    assert "opa check --strict failed" in str(e.value)
    assert "unused argument x" in str(e.value)
    assert not (tmp_path / "bad").exists()


def test_overlapping_paths_are_refused(tmp_path: Path, library: Path) -> None:
    with pytest.raises(bundle.BundleError, match="already taken"):
        bundle.build_bundle({**GENERATED, "talon/plan.rego": LIBRARY_PLAN}, tmp_path / "x", library=library)
    with pytest.raises(bundle.BundleError, match="bad bundle path"):
        bundle.build_bundle({"../escape.rego": "package talon.x\n"}, tmp_path / "y", library=library)


async def test_signed_bundle_is_served_and_a_tampered_copy_is_refused(
    tmp_path: Path, library: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    signed = tmp_path / "signed.tar.gz"
    revision = bundle.build_bundle(GENERATED, signed, library=library, signing_key=private)
    members = tar_members(signed)
    assert ".signatures.json" in members
    assert json.loads(members[".manifest"])["revision"] == revision

    opa = OpaProcess(bundle=signed, verification_key=public)
    await opa.start()
    try:
        assert await plan_of(opa, {"rule": "Terminal shell in container"}) == SHELL_PLAN
    finally:
        await opa.stop()

    # re-tar a copy with one policy byte changed: the signature no longer covers it
    tampered_members = dict(members)
    tampered_members["talon/plan.rego"] = members["talon/plan.rego"].replace(b"input.rule in", b"true; input.rule in")
    tampered = tmp_path / "tampered.tar.gz"
    write_tar(tampered, tampered_members)
    bad = OpaProcess(bundle=tampered, verification_key=public)
    with pytest.raises(OpaError) as e:
        await bad.start(ready_within=15)
    await bad.stop()
    assert "talon/plan.rego: digest mismatch" in str(e.value)


async def test_unsigned_bundle_is_refused_when_a_key_is_configured(
    tmp_path: Path, library: Path, keys: tuple[Path, Path]
) -> None:
    unsigned = tmp_path / "unsigned.tar.gz"
    bundle.build_bundle(GENERATED, unsigned, library=library)
    opa = OpaProcess(bundle=unsigned, verification_key=keys[1])
    with pytest.raises(OpaError) as e:
        await opa.start(ready_within=15)
    await opa.stop()
    assert "bundle missing .signatures.json file" in str(e.value)


def test_signing_a_directory_bundle_is_refused(tmp_path: Path, library: Path, keys: tuple[Path, Path]) -> None:
    # OPA verifies a directory's signature against the path it was signed at: only tarballs are signed
    with pytest.raises(bundle.BundleError, match=r"FILE\.tar\.gz"):
        bundle.build_bundle(GENERATED, tmp_path / "dir", library=library, signing_key=keys[0])
    assert not (tmp_path / "dir").exists()


@pytest.fixture
def signed_seed(tmp_path: Path, keys: tuple[Path, Path]) -> tuple[Path, dict[str, object]]:
    """`talon-opa rules translate --signing-key` of the seed rules: (bundle, the shell alert's OPA input)."""
    from talon_opa.core import events

    seed = paths.SEED_RULES
    out = tmp_path / "seed.tar.gz"
    args = ["rules", "translate", "-r", str(seed), "-o", str(out), "--signing-key", str(keys[0])]
    done = subprocess.run(
        [sys.executable, "-m", "talon_opa.cli.main", *args],
        cwd=binaries.REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"revision {bundle.read_manifest(out)['revision']} bundle {out}\n"
    alert = (paths.ALERTS / "falco-terminal-shell-in-container.json").read_bytes()
    return out, events.decode_alert(alert, "application/json").opa_input()


async def test_rules_translate_signs_a_bundle_opa_serves_and_refuses_once_tampered(
    tmp_path: Path, keys: tuple[Path, Path], signed_seed: tuple[Path, dict[str, object]]
) -> None:
    out, shell = signed_seed
    members = tar_members(out)
    assert ".signatures.json" in members

    opa = OpaProcess(bundle=out, verification_key=keys[1])
    await opa.start()
    try:
        got = await plan_of(opa, shell)
        assert isinstance(got, dict)
        assert got["matched_rules"] == ["Shell in a container"]
    finally:
        await opa.stop()

    # tamper a generated module (a rule's match) in a re-tarred copy: OPA must refuse to activate it
    name = next(n for n in members if n.endswith(".rego") and not n.startswith("talon/lib/") and b"match" in members[n])
    tampered = tmp_path / "tampered.tar.gz"
    write_tar(tampered, {**members, name: members[name] + b"\n# tampered\n"})
    bad = OpaProcess(bundle=tampered, verification_key=keys[1])
    with pytest.raises(OpaError) as e:
        await bad.start(ready_within=15)
    await bad.stop()
    assert f"{name}: digest mismatch" in str(e.value)


def test_the_translated_tarball_and_the_sidecars_bundle_are_the_same_bytes(tmp_path: Path, library: Path) -> None:
    # one packer: `rules translate -o FILE.tar.gz` and the engine's bundle service give OPA the same archive
    directory, archive = tmp_path / "dir", tmp_path / "b.tar.gz"
    revision = bundle.build_bundle(GENERATED, directory, library=library)
    assert bundle.build_bundle(GENERATED, archive, library=library) == revision
    assert reload.pack(directory) == archive.read_bytes() == bundle.pack(directory)
    assert reload.pack(archive) == archive.read_bytes()
    members = tar_members(archive)
    assert sorted(members) == sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    assert all(members[name] == (directory / name).read_bytes() for name in members)
