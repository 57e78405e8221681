"""`talon-opa server`'s start-up as a process: what it does early or late to be ready sooner changes nothing.

The child OPA is spawned on the first bundle before the rest of the engine is imported
(talon_opa/engine/prestart.py): a signed bundle is still verified by it, from the cache too, and a bundle it
refuses still keeps the engine from starting. The system's CA certificates are loaded on first use, not at
start-up (talon_opa/core/deferred_certs.py): an https notification still gets them, and still verifies. The
"system" CA is the test's own there, through OpenSSL's `SSL_CERT_FILE`: a webhook to a receiver whose
certificate that CA signed is delivered; one to a receiver with a certificate nobody signed is not.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web
from cryptography.x509.oid import ExtendedKeyUsageOID

from talon_opa.core import compile_cache
from talon_opa.opa.process import free_port
from tests.e2e.engine_harness import DRY_RUN_RULES, shell_alert
from tests.e2e.server_process import REPO, log_lines, server_env, spawn_server, stop_server, wait_ready
from tests.e2e.test_engine_opa import _key_pair
from tests.e2e.test_engine_tls import _cert, _key, _write


@asynccontextmanager
async def https_hook(cert: Path, seen: list[bytes]) -> AsyncIterator[str]:
    """An https receiver (`cert` and its `.key`) keeping every POST to /hook; yields its URL."""

    async def hook(request: web.Request) -> web.Response:
        seen.append(await request.read())
        return web.Response(text="ok")

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, cert.with_suffix(".key"))
    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


async def notify_once(tmp_path: Path, hook_url: str, ca: Path) -> list[dict[str, object]]:
    """Run the server with `ca` as the system's CA bundle, post one alert, stop: the notification log lines."""
    port = free_port()
    rules = tmp_path / "rules.yaml"
    rules.write_text(DRY_RUN_RULES.replace("  dry_run: true\n", ""))
    # a cluster nobody listens for: the action fails at once, and its failure is what gets notified
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "clusters": [{"name": "gone", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
                "current-context": "gone",
            }
        )
    )
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "listen_port": port,
                "log_format": "json",
                "kubeconfig": str(kubeconfig),
                "notifiers": {"webhook": {"url": hook_url}},
                "default_notifiers": ["webhook"],
            }
        )
    )
    log = tmp_path / "server.log"
    proc = await spawn_server(cfg, rules, log, {"SSL_CERT_FILE": str(ca)})
    url = f"http://127.0.0.1:{port}"
    try:
        return await _post_until_logged(url, proc, log, "notification")
    finally:
        await stop_server(proc)


async def _post_until_logged(
    url: str, proc: asyncio.subprocess.Process, log: Path, message: str
) -> list[dict[str, object]]:
    """Once the engine is ready, post a shell alert; the engine's log lines with this message (bounded wait)."""
    await wait_ready(url, proc)
    async with aiohttp.ClientSession() as http, http.post(url + "/", json=shell_alert()) as r:
        assert r.status == 200
    for _ in range(300):
        found = [line for line in log_lines(log) if line.get("message") == message]
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {message!r} line in the engine's log")


async def test_https_notifications_trust_the_system_cas_loaded_after_start_up(tmp_path: Path) -> None:
    ca_key = _key()
    ca = _cert("test CA", ca_key, None, ca=True)
    _write(tmp_path / "ca.pem", ca)
    signed_key = _key()
    _write(
        tmp_path / "signed.pem",
        _cert("hook", signed_key, (ca, ca_key), usage=ExtendedKeyUsageOID.SERVER_AUTH),
        signed_key,
    )
    stranger_key = _key()
    _write(
        tmp_path / "stranger.pem",
        _cert("hook", stranger_key, None, usage=ExtendedKeyUsageOID.SERVER_AUTH),
        stranger_key,
    )

    seen: list[bytes] = []
    (tmp_path / "trusted").mkdir()
    async with https_hook(tmp_path / "signed.pem", seen) as hook_url:
        notes = await notify_once(tmp_path / "trusted", hook_url, tmp_path / "ca.pem")
    assert [n["status"] for n in notes] == ["success"], notes
    assert len(seen) == 1

    unseen: list[bytes] = []
    (tmp_path / "untrusted").mkdir()
    async with https_hook(tmp_path / "stranger.pem", unseen) as hook_url:
        notes = await notify_once(tmp_path / "untrusted", hook_url, tmp_path / "ca.pem")
    assert [n["status"] for n in notes] == ["failure"], notes
    assert "certificate verify failed" in str(notes[0]["error"])
    assert unseen == []


async def _server(
    tmp_path: Path, opa: Mapping[str, object], log: Path, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    """The server on the dry-run rules with these `opa:` settings (not waited for), and its URL."""
    port = free_port()
    rules = tmp_path / "rules.yaml"
    rules.write_text(DRY_RUN_RULES)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"listen_port": port, "log_format": "json", "opa": dict(opa)}))
    return await spawn_server(cfg, rules, log, env), f"http://127.0.0.1:{port}"


async def _serve_one_alert(
    tmp_path: Path, opa: Mapping[str, object], log: Path, env: dict[str, str] | None = None
) -> None:
    """Start the server; once ready, one alert, acted on (in dry run); then stop it."""
    proc, url = await _server(tmp_path, opa, log, env)
    try:
        await _post_until_logged(url, proc, log, "action")
    finally:
        await stop_server(proc)


async def test_the_early_child_opa_verifies_signed_bundles_built_or_cached(tmp_path: Path) -> None:
    private, public = _key_pair(tmp_path, "signing")
    _, stranger = _key_pair(tmp_path, "other")
    cache = tmp_path / "cache"
    signed = {"signing_key": str(private), "verification_key": str(public), "cache_dir": str(cache)}

    starts = []
    for n in range(2):  # built and stored, then from the cache
        log = tmp_path / f"server-{n}.log"
        await _serve_one_alert(tmp_path, signed, log)
        starts.append(next(line for line in log_lines(log) if line.get("message") == "engine started"))
    assert starts[0]["revision"] == starts[1]["revision"]
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1

    for refused in ("cached", "built"):  # verified with another key: OPA refuses it, the engine does not start
        if refused == "built":
            shutil.rmtree(cache)
        log = tmp_path / f"refused-{refused}.log"
        proc, _ = await _server(tmp_path, {**signed, "verification_key": str(stranger)}, log)
        assert await asyncio.wait_for(proc.wait(), 60) == 1
        failed = [line for line in log_lines(log) if line.get("message") == "engine did not start"]
        assert failed, log_lines(log)[-3:]
        assert "verification" in str(failed[0]["error"])


async def test_a_start_on_what_the_one_before_compiled_acts_the_same(tmp_path: Path) -> None:
    """The first start compiles the methods dataclasses generate and the regular expressions, and keeps them
    beside the bytecode (talon_opa/core/compile_cache.py); the next runs them: it starts, decides and acts
    as the first; a damaged table is compiled anew."""
    pycache = tmp_path / "pycache"
    env = {"PYTHONPYCACHEPREFIX": str(pycache), "PYTHONDONTWRITEBYTECODE": ""}  # empty: bytecode is written
    tables = []
    for n in range(3):
        if n == 2:
            _damage(pycache)
        log = tmp_path / f"server-{n}.log"
        await _serve_one_alert(tmp_path, {}, log, env)
        assert [line for line in log_lines(log) if line.get("message") == "engine started"]
        tables.append(_kept_table(pycache))
        assert len(tables[-1][1]) > 100, n
    assert tables[1][0] == tables[0][0], "the second start found every method: it compiled and wrote nothing"
    assert tables[2][1] == tables[0][1], "the damaged table is written anew (its methods)"


async def test_an_image_build_compiles_what_the_server_start_compiles(tmp_path: Path) -> None:
    """`python -m talon_opa.cli.compile_table` (the Dockerfile's build step) keeps everything a start of
    `talon-opa server` compiles: that start finds it all, and writes nothing."""
    pycache = tmp_path / "pycache"
    env = {"PYTHONPYCACHEPREFIX": str(pycache), "PYTHONDONTWRITEBYTECODE": ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "talon_opa.cli.compile_table", env=server_env(env), cwd=REPO
    )
    assert await asyncio.wait_for(proc.wait(), 120) == 0
    built, methods = _kept_table(pycache)
    await _serve_one_alert(tmp_path, {}, tmp_path / "server.log", env)
    assert _kept_table(pycache) == (built, methods), "the start compiled something the build did not keep"


def _kept_path(pycache: Path) -> Path:
    (kept,) = pycache.rglob("compile_cache.*.compiled")
    return kept


def _kept_table(pycache: Path) -> tuple[bytes, set[bytes]]:
    """The table the server kept under PYTHONPYCACHEPREFIX: its bytes and the keys of its methods (those of
    its expressions vary a little from start to start: `compile_cache._NEW_EACH_TIME`)."""
    kept = _kept_path(pycache)
    table = compile_cache.read(kept)
    assert len(table.programs) > 100
    return kept.read_bytes(), set(table.methods)


def _damage(pycache: Path) -> None:
    _kept_path(pycache).write_bytes(b"damaged")


SPAWN_PROBE = """
import asyncio, json, sys
from talon_opa.core import config
from talon_opa.engine import prestart
head = prestart.prestart(config.load(sys.argv[1], rules=[sys.argv[2]]))
imported = sorted(m for m in sys.modules if m.split(".")[0] in ("aiohttp", "prometheus_client", "talon_opa"))
asyncio.run(head.opa.wait_ready(60))  # the bundle it was spawned on is active
asyncio.run(head.opa.stop())
print(json.dumps({"rules": len(head.built.rules), "imported": imported}))
"""

SPAWN_RULES = """\
- rule: Shell in a container
  match: {rules: [Terminal shell in container]}
  notifiers: [slack, webhook]
  actions:
    - action: Mark the pod
      actionner: kubernetes:label
      parameters: {labels: {suspicious: "true"}}
    - action: Keep its logs
      actionner: kubernetes:log
      output: {target: local:file, parameters: {destination: /tmp}}
"""


def test_the_child_opa_is_spawned_before_aiohttp_and_the_serving_parts_are_imported(tmp_path: Path) -> None:
    """`engine/prestart.py` on rules naming actionners, an output and HTTP notifiers: OPA is spawned (and
    activates the bundle) with only those plugins imported, and neither aiohttp, nor the metrics, nor any
    serving part of the engine (docs/performance.md, "What start-up does")."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "log_format: json\nnotifiers:\n  slack: {webhook_url: 'https://hooks.example/T/B/x'}\n"
        "  webhook: {url: 'http://127.0.0.1:9/hook'}\n"
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(SPAWN_RULES)
    done = subprocess.run(
        [sys.executable, "-c", SPAWN_PROBE, str(cfg), str(rules)],
        env=server_env({}),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.splitlines()[-1])
    assert probe["rules"] == 1
    imported = set(probe["imported"])
    plugins = {m for m in imported if m.split(".")[1:2] in (["actionners"], ["outputs"], ["notifiers"])}
    assert plugins >= {
        "talon_opa.actionners.kubernetes.label",
        "talon_opa.actionners.kubernetes.log",
        "talon_opa.outputs.file",
        "talon_opa.notifiers.slack",
        "talon_opa.notifiers.webhook",
    }
    assert "talon_opa.actionners.kubernetes.terminate" not in imported
    assert "talon_opa.notifiers.smtp" not in imported
    assert not {m for m in imported if m.split(".")[0] in ("aiohttp", "prometheus_client")}
    assert not imported & {
        "talon_opa.engine.server",
        "talon_opa.engine.app",
        "talon_opa.engine.metrics",
        "talon_opa.opa.client",
    }
