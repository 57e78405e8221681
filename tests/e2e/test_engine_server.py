"""`talon-opa server` as a process: config file + env, dry-run without Kubernetes credentials, JSON logs
with trace ids, /metrics, and SIGTERM draining every accepted alert."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import yaml

from talon_opa.opa.process import free_port
from tests.e2e.engine_harness import DRY_RUN_RULES, shell_alert
from tests.e2e.server_process import cli, log_lines, server_env, spawn_server, stop_server, wait_ready


async def test_server_runs_dry_run_without_credentials_and_drains_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    rules = tmp_path / "rules.yaml"
    rules.write_text(DRY_RUN_RULES.replace("  dry_run: true\n", ""))  # not dry-run in the rules
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"listen_port": 1, "print_all_events": True, "queue": {"workers": 2}}))
    # env wins over the file, as with Talon
    env = {"LISTEN_PORT": str(port), "DEDUPLICATION_TIME_WINDOW_SECONDS": "0"}
    log = tmp_path / "server.log"
    proc = await spawn_server(cfg, rules, log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, proc)
        trace_ids = []
        async with aiohttp.ClientSession() as http:
            for i in range(30):
                async with http.post(url + "/", json=shell_alert(f"srv-{i}")) as r:
                    assert r.status == 200
                    trace_ids.append((await r.json())["trace_id"])
        assert await stop_server(proc) == 0
    finally:
        await stop_server(proc, gracefully=False)
    lines = log_lines(log)
    messages = [line["message"] for line in lines]
    assert any("DRY-RUN" in m for m in messages), "no credentials is said loudly"
    actions = [line for line in lines if line["message"] == "action"]
    assert len(actions) == 30, "SIGTERM drained every accepted alert"
    assert {a["status"] for a in actions} == {"dry_run"}
    assert {a["trace_id"] for a in actions} == set(trace_ids)
    events = [line for line in lines if line["message"] == "event"]
    assert all("trace_id" in e for e in events)
    assert "drained, every accepted alert finished" in messages
    assert messages[-1] == "stopped"


async def test_server_exits_1_naming_the_bad_config_key(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("listen_port: not-a-port\n")
    code, out = await cli("server", "-c", str(cfg), "-r", "x.yaml")
    assert code == 1
    assert "listen_port" in out
    assert "whole number" in out


async def test_server_exits_1_with_every_rules_problem_and_its_place(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "- rule: Broken\n  match:\n    rules: [x]\n  actions:\n    - action: Nope\n      actionner: kubernetes:nope\n"
    )
    code, out = await cli("server", "-r", str(rules), env=server_env({"LISTEN_PORT": str(free_port())}))
    assert code == 1
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    problems = [line for line in lines if line["message"] == "invalid rules"]
    assert problems
    assert problems[0]["where"].startswith(f"{rules}:6:")


async def test_sighup_reloads_the_rules(tmp_path: Path) -> None:
    port = free_port()
    rules = tmp_path / "rules.yaml"
    rules.write_text(DRY_RUN_RULES)
    proc = await spawn_server(None, rules, tmp_path / "server.log", {"LISTEN_PORT": str(port), "WATCH_RULES": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, proc)
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/readyz") as r:
                before = (await r.json())["revision"]
            rules.write_text(DRY_RUN_RULES.replace("Shell in a container", "Renamed rule"))
            await asyncio.sleep(0.1)
            assert (await http.get(url + "/readyz")).status == 200  # not watched: nothing changes yet
            proc.send_signal(signal.SIGHUP)
            for _ in range(100):
                async with http.get(url + "/readyz") as r:
                    if r.status == 200 and (await r.json())["revision"] != before:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("SIGHUP did not reload the rules")
            async with http.post(url + "/", json=shell_alert("hup")) as r:
                assert r.status == 200
            for _ in range(100):
                async with http.get(url + "/metrics") as r:
                    if 'rule="Renamed rule"' in await r.text():
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the reloaded rule did not act")
        assert await stop_server(proc) == 0
    finally:
        await stop_server(proc, gracefully=False)


async def test_server_runs_on_uvloop_when_installed(tmp_path: Path) -> None:
    """uvloop (a pinned dependency) is the server's event loop: the `listening` line names it."""
    port = free_port()
    rules = tmp_path / "rules.yaml"
    rules.write_text(DRY_RUN_RULES)
    log = tmp_path / "server.log"
    proc = await spawn_server(None, rules, log, {"LISTEN_PORT": str(port), "WATCH_RULES": "false"})
    try:
        await wait_ready(f"http://127.0.0.1:{port}", proc)
        assert await stop_server(proc) == 0
    finally:
        await stop_server(proc, gracefully=False)
    lines = log_lines(log)
    listening = next(line for line in lines if line["message"] == "listening")
    assert listening["event_loop"] == "uvloop"
