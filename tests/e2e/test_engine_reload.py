"""Hot reload: a bad rules file changes nothing that runs; a good one goes live atomically."""

from __future__ import annotations

import asyncio
import logging
import os
import tarfile
from pathlib import Path

import pytest

from talon_opa.catalog import default_registry
from talon_opa.engine import reload
from talon_opa.translator.bundle import BundleError
from tests.e2e.engine_harness import DRY_RUN_RULES, RunningEngine, running_engine, shell_alert

RULES = """\
- rule: {name}
  match:
    rules: [Terminal shell in container]
  dry_run: true
  actions:
    - action: Mark
      actionner: kubernetes:label
      parameters:
        labels: {{suspicious: "true"}}
"""

BAD_ACTIONNER = """\
- rule: Broken
  match:
    rules: [Terminal shell in container]
  actions:
    - action: Nope
      actionner: kubernetes:nope
"""

BAD_YAML = "- rule: [unclosed\n"


async def wait_metric(e: RunningEngine, name: str, value: float, within: float = 10, **labels: str) -> None:
    for _ in range(int(within / 0.05)):
        if await e.metric(name, **labels) >= value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}{labels} did not reach {value}: {await e.metric(name, **labels)}")


async def acted(e: RunningEngine, rule: str, pod: str) -> float:
    assert (await e.post(json_body=shell_alert(pod))).status == 200
    await e.drained()
    return await e.metric("falcosecurity_falco_talon_actions_total", rule=rule, status="dry_run")


async def test_a_bad_reload_keeps_the_old_rules_and_a_good_one_goes_live(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="talon_opa")
    async with running_engine(tmp_path, RULES.format(name="Old"), watch_rules=True, watch_interval_seconds=0.1) as e:
        old_revision = (await e.get("/readyz")).body["revision"]
        assert await acted(e, "Old", "p-1") == 1

        e.rules.write_text(BAD_ACTIONNER)
        await wait_metric(e, "talon_opa_rules_reloads_total", 1, status="failure")
        problems = [r for r in caplog.records if r.getMessage() == "invalid rules"]
        assert problems, "every problem is logged"
        where = problems[0].__dict__
        assert where["file"].endswith("rules.yaml")
        assert where["line"] >= 1
        assert where["field"] == "actionner"
        assert await acted(e, "Old", "p-2") == 2  # the old rules still act
        assert (await e.get("/readyz")).body["revision"] == old_revision

        e.rules.write_text(BAD_YAML)
        await wait_metric(e, "talon_opa_rules_reloads_total", 2, status="failure")
        assert await acted(e, "Old", "p-3") == 3

        e.rules.write_text(RULES.format(name="New"))
        await wait_metric(e, "talon_opa_rules_reloads_total", 1, status="success")
        assert await acted(e, "New", "p-4") == 1
        assert await e.metric("falcosecurity_falco_talon_actions_total", rule="Old") == 3
        ready = await e.get("/readyz")
        assert ready.status == 200
        assert ready.body["revision"] != old_revision


async def test_a_configmap_style_symlink_swap_is_seen(tmp_path: Path) -> None:
    # kubelet's layout: rules.yaml -> ..data/rules.yaml, ..data -> ..2026_v1; an update swaps ..data
    mount = tmp_path / "mount"
    for version, name in (("..v1", "Old"), ("..v2", "New")):
        (mount / version).mkdir(parents=True)
        (mount / version / "rules.yaml").write_text(RULES.format(name=name))
    os.symlink("..v1", mount / "..data")
    os.symlink("..data/rules.yaml", mount / "rules.yaml")
    rules = tmp_path / "rules.yaml"
    os.symlink(mount / "rules.yaml", rules)
    async with running_engine(tmp_path, "", watch_rules=True, watch_interval_seconds=0.1) as e:
        assert await acted(e, "Old", "s-1") == 1
        os.symlink("..v2", mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")  # atomic, as kubelet does
        await wait_metric(e, "talon_opa_rules_reloads_total", 1, status="success")
        assert await acted(e, "New", "s-2") == 1


async def test_truncate_then_write_never_puts_an_empty_rule_set_live(tmp_path: Path) -> None:
    # allow_empty_rules: only the watcher's settling protects here (the default would refuse an empty set too)
    async with running_engine(
        tmp_path, RULES.format(name="R0"), watch_rules=True, watch_interval_seconds=0.1, allow_empty_rules=True
    ) as e:
        seen: list[int] = []

        async def watch_active() -> None:
            while True:
                assert e.engine.built is not None
                seen.append(len(e.engine.built.rules))
                await asyncio.sleep(0.01)

        monitor = asyncio.create_task(watch_active())
        try:
            for i in range(1, 6):
                with e.rules.open("w") as f:  # truncated: an empty file for 0.6 s, then the rules
                    f.flush()
                    await asyncio.sleep(0.6)
                    f.write(RULES.format(name=f"R{i}"))
                for _ in range(400):  # bounded: until the new rules are live
                    assert e.engine.built is not None
                    if e.engine.built.rules[0] == f"R{i}":
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"R{i} never went live")
        finally:
            monitor.cancel()
        assert seen
        assert 0 not in seen, "an empty rule set went live"
        assert await e.metric("talon_opa_rules_reloads_total", status="success") == 5
        assert await acted(e, "R5", "t-1") == 1


async def test_an_empty_rule_set_after_rules_is_refused_loudly_by_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="talon_opa")
    async with running_engine(tmp_path, RULES.format(name="Kept"), watch_rules=True, watch_interval_seconds=0.1) as e:
        e.rules.write_text("# every rule commented out\n# - rule: Kept\n")
        await wait_metric(e, "talon_opa_rules_reloads_total", 1, status="refused_empty")
        assert [r for r in caplog.records if r.levelname == "WARNING" and "reload refused" in r.getMessage()]
        ready = await e.get("/readyz")
        assert ready.status == 200
        assert "reload refused" in ready.body["warning"]
        assert ready.body["rules"] == 1
        assert await e.metric("talon_opa_rules_active") == 1
        assert await acted(e, "Kept", "e-1") == 1  # the old rules still act


async def test_an_allowed_empty_rule_set_goes_live_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="talon_opa")
    async with running_engine(
        tmp_path, RULES.format(name="Gone"), watch_rules=True, watch_interval_seconds=0.1, allow_empty_rules=True
    ) as e:
        e.rules.write_text("# nothing here\n")
        await wait_metric(e, "talon_opa_rules_reloads_total", 1, status="success")
        assert await e.metric("talon_opa_rules_active") == 0
        assert [r for r in caplog.records if r.levelname == "WARNING" and r.getMessage().startswith("NO RULES")]
        ready = await e.get("/readyz")
        assert (ready.status, ready.body["rules"]) == (200, 0)
        assert "every response is off" in ready.body["warning"]
        assert await acted(e, "Gone", "e-2") == 0


def test_native_rego_is_checked_strictly_when_the_child_compiles_the_rest(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(DRY_RUN_RULES)
    native = tmp_path / "mine.rego"
    native.write_text('package talon.rules.mine\n\nimport data.unused\n\nmatch if input.rule == "x"\n')
    with pytest.raises(BundleError, match="unused"):
        reload.build([str(rules)], default_registry(), tmp_path, [native], child_checks=True)
    assert not list(tmp_path.glob("bundle-*"))
    native.write_text('package talon.rules.mine\n\nmatch if input.rule == "x"\n')
    built = reload.build([str(rules)], default_registry(), tmp_path, [native], child_checks=True)
    with tarfile.open(built.path) as tar:
        assert "native/mine.rego" in tar.getnames()
