"""`talon-opa server` as a process, hardened (issue 14): its OPA child dies with it even on SIGKILL, a
kubeconfig's client key never lands in a file, only a token or client certificates count as
authentication, and a kubeconfig's client certificate from memory is presented to a real TLS server."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import ssl
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from talon_opa.core.kube import KubeClient, KubeConfig
from talon_opa.opa.process import free_port
from tests.e2e.engine_harness import DRY_RUN_RULES
from tests.e2e.server_process import log_lines, spawn_server, stop_server, wait_ready
from tests.e2e.test_engine_tls import _cert, _key, _write


def _pem_pair(tmp_path: Path) -> tuple[bytes, bytes, Path]:
    """A CA, a server certificate for 127.0.0.1, and a client certificate and key (PEM) signed by the CA."""
    ca_key = _key()
    ca = _cert("talon-opa test CA", ca_key, None, ca=True)
    server_key, client_key = _key(), _key()
    _write(tmp_path / "ca.pem", ca)
    _write(
        tmp_path / "server.pem",
        _cert("127.0.0.1", server_key, (ca, ca_key), usage=ExtendedKeyUsageOID.SERVER_AUTH),
        server_key,
    )
    client = _cert("talon-opa", client_key, (ca, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    cert_pem = client.public_bytes(serialization.Encoding.PEM)
    key_pem = client_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem, key_pem, tmp_path / "ca.pem"


def _kubeconfig(path: Path, server: str, cert_pem: bytes, key_pem: bytes, ca: Path) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [
            {
                "name": "u",
                "user": {
                    "client-certificate-data": base64.b64encode(cert_pem).decode(),
                    "client-key-data": base64.b64encode(key_pem).decode(),
                },
            }
        ],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for p in root.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink() and needle in p.read_bytes():
                found.append(p)
        except OSError:
            continue
    return found


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry.name))
    return out


def _is_opa(pid: int) -> bool:
    return b"opa" in Path(f"/proc/{pid}/cmdline").read_bytes()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _server(tmp_path: Path, cfg: dict[str, Any], env: dict[str, str] | None = None) -> tuple[Any, Path, int]:
    port = free_port()
    rules = tmp_path / "rules.yaml"
    rules.write_text(DRY_RUN_RULES)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"listen_port": port, **cfg}))
    log = tmp_path / "server.log"
    proc = await spawn_server(tmp_path / "config.yaml", rules, log, env)
    return proc, log, port


async def test_a_sigkilled_server_leaves_no_opa_running_and_no_client_key_on_disk(tmp_path: Path) -> None:
    cert_pem, key_pem, ca = _pem_pair(tmp_path)
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:9", cert_pem, key_pem, ca)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc, log, port = await _server(tmp_path, {"kubeconfig": str(kubeconfig)}, {"TMPDIR": str(tmp)})
    try:
        await wait_ready(f"http://127.0.0.1:{port}", proc)
        assert not any(line["message"].startswith("NO KUBERNETES") for line in log_lines(log))  # the key was loaded
        opa = [pid for pid in _children(proc.pid) if _is_opa(pid)]
        assert len(opa) == 1, opa
        assert _files_containing(tmp, key_pem.splitlines()[1]) == []  # not even while running
        assert list(tmp.rglob("authz.rego")) == []  # nor the child OPA's token, once OPA has loaded it
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        for _ in range(200):  # bounded: the kernel signals the child as the parent dies
            if not _alive(opa[0]):
                break
            await asyncio.sleep(0.05)
        else:
            os.kill(opa[0], signal.SIGKILL)
            raise AssertionError("the OPA child outlived the SIGKILLed engine")
    finally:
        await stop_server(proc, gracefully=False)
    assert _files_containing(tmp, key_pem.splitlines()[1]) == []


async def test_a_kubeconfigs_client_certificate_from_memory_is_presented(tmp_path: Path) -> None:
    cert_pem, key_pem, ca = _pem_pair(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    server_ctx.load_verify_locations(cafile=str(ca))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    seen: list[str] = []

    async def api(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        seen.append(str(dict(x[0] for x in peer["subject"])["commonName"]) if peer else "")
        return web.json_response({"kind": "Namespace", "metadata": {"name": "default"}})

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/default", api)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ctx).start()
    try:
        cfg = KubeConfig.from_file(_kubeconfig(tmp_path / "kc", f"https://127.0.0.1:{port}", cert_pem, key_pem, ca))
        assert cfg.cert_file is None
        assert cfg.key_file is None  # nothing written
        kube = KubeClient(cfg)
        try:
            doc = await kube.get("/api/v1/namespaces/default")
        finally:
            await kube.close()
        assert doc["metadata"]["name"] == "default"
        assert seen == ["talon-opa"]
    finally:
        await runner.cleanup()


async def test_server_tls_alone_is_not_authentication(tmp_path: Path) -> None:
    _pem_pair(tmp_path)
    tls = {"cert_file": str(tmp_path / "server.pem"), "key_file": str(tmp_path / "server.key")}
    proc, log, port = await _server(tmp_path, {"tls": tls})
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    try:
        await wait_ready(f"https://127.0.0.1:{port}", proc, ssl_context=ctx)
        assert await stop_server(proc) == 0
    finally:
        await stop_server(proc, gracefully=False)
    lines = log_lines(log)
    listening = next(line for line in lines if line["message"] == "listening")
    assert (listening["address"], listening["tls"], listening["auth"]) == ("127.0.0.1", True, "none")
    warnings = [line for line in lines if line["level"] == "warning" and "not authentication" in line["message"]]
    assert len(warnings) == 1
    assert "tls.client_ca_file" in warnings[0]["hint"]


async def test_mtls_counts_as_authentication(tmp_path: Path) -> None:
    cert_pem, key_pem, ca = _pem_pair(tmp_path)
    (tmp_path / "client.pem").write_bytes(cert_pem)
    (tmp_path / "client.key").write_bytes(key_pem)
    tls = {
        "cert_file": str(tmp_path / "server.pem"),
        "key_file": str(tmp_path / "server.key"),
        "client_ca_file": str(ca),
    }
    proc, log, port = await _server(tmp_path, {"tls": tls})
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    try:
        await wait_ready(f"https://127.0.0.1:{port}", proc, ssl_context=ctx)
        assert await stop_server(proc) == 0
    finally:
        await stop_server(proc, gracefully=False)
    lines = log_lines(log)
    listening = next(line for line in lines if line["message"] == "listening")
    assert (listening["address"], listening["auth"]) == ("0.0.0.0", "mtls")
    assert not [line for line in lines if "authentication" in line["message"]]
