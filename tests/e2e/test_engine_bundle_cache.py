"""`opa.cache_dir`: a restart on the same rules runs the cached bundle; a damaged or stale entry is rebuilt."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from talon_opa.catalog import default_registry
from talon_opa.core import config
from talon_opa.engine import reload
from talon_opa.engine.bundle_cache import BUNDLE, META, BundleCache
from tests.e2e.engine_harness import DRY_RUN_RULES, running_engine, shell_alert
from tests.e2e.test_engine_opa import _key_pair

WARNED_RULES = DRY_RUN_RULES + "  unknown_key: 1\n"  # a warning, which a cached start must repeat


def _entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir() and not p.name.startswith("."))


async def _decides_once(tmp_path: Path, opa: config.Opa, rules: str = DRY_RUN_RULES) -> reload.Built:
    async with running_engine(tmp_path, rules, opa=opa) as e:
        assert (await e.post(json_body=shell_alert("cached"))).status == 200
        await e.drained()
        assert await e.metric("falcosecurity_falco_talon_actions_total", status="dry_run") == 1
        assert (await e.get("/readyz")).status == 200
        assert e.engine.built is not None
        return e.engine.built


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bundle-cache" / "config.yaml"


async def test_a_restart_on_the_same_rules_runs_the_cached_bundle(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    example = config.load(str(EXAMPLE))
    assert example.opa.cache_dir == "/var/cache/talon-opa/bundles"
    opa = dataclasses.replace(example.opa, cache_dir=str(tmp_path / "cache"))  # the example's, in a writable place
    first = await _decides_once(tmp_path, opa, WARNED_RULES)
    assert not first.from_cache
    assert len(_entries(tmp_path / "cache")) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = await _decides_once(tmp_path, opa, WARNED_RULES)
    assert again.from_cache
    assert (again.revision, again.rules, again.plugins) == (first.revision, first.rules, first.plugins)
    assert again.warnings == first.warnings != ()
    assert any(getattr(r, "where", "") == str(first.warnings[0]) for r in caplog.records)


@pytest.mark.parametrize("damage", ["bundle", "meta"])
async def test_a_damaged_cache_entry_is_rebuilt(tmp_path: Path, damage: str) -> None:
    opa = dataclasses.replace(config.Opa(), cache_dir=str(tmp_path / "cache"))
    first = await _decides_once(tmp_path, opa)
    (entry,) = _entries(tmp_path / "cache")
    if damage == "bundle":
        (entry / BUNDLE).write_bytes(b"not a bundle")
    else:
        (entry / META).write_text("{")
    again = await _decides_once(tmp_path, opa)
    assert not again.from_cache
    assert again.revision == first.revision
    assert json.loads((entry / META).read_text())["revision"] == first.revision  # stored again, whole
    assert (await _decides_once(tmp_path, opa)).from_cache


async def test_signed_bundles_come_from_the_cache_signed_and_verified(tmp_path: Path) -> None:
    private, public = _key_pair(tmp_path, "signing")
    signed = dataclasses.replace(
        config.Opa(), signing_key=str(private), verification_key=str(public), cache_dir=str(tmp_path / "cache")
    )
    assert not (await _decides_once(tmp_path, signed)).from_cache
    assert (await _decides_once(tmp_path, signed)).from_cache
    other, other_public = _key_pair(tmp_path, "other")
    resigned = dataclasses.replace(signed, signing_key=str(other), verification_key=str(other_public))
    assert not (await _decides_once(tmp_path, resigned)).from_cache  # the key is part of what is cached


def test_any_change_of_what_goes_into_the_bundle_misses_the_cache(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(DRY_RUN_RULES)
    cache = BundleCache(tmp_path / "cache")
    registry = default_registry()

    def build(
        caps: dict[str, object] | None = None,
        approvals: dict[str, object] | None = None,
        undo: dict[str, object] | None = None,
    ) -> reload.Built:
        built = reload.build(
            [str(rules)], registry, tmp_path, caps=caps, approvals=approvals, undo=undo, cache=cache, child_checks=True
        )
        reload.remove(built.path)
        return built

    first = build()
    assert not first.from_cache
    assert build().from_cache
    caps: dict[str, object] = {"protected_namespaces": ["kube-system"]}
    assert not build(caps).from_cache
    approvals = config.parse_approvals({"require": [{"actionners": ["kubernetes:terminate"]}]})
    assert not build(approvals=dict(approvals)).from_cache
    undo = config.parse_undo({"ttl_seconds": {"actionners": {"kubernetes:label": 60}}})
    assert not build(undo=dict(undo)).from_cache
    assert build(undo=dict(undo)).from_cache
    rules.write_text(DRY_RUN_RULES.replace("Shell in a container", "Shell in a pod"))
    changed = build()
    assert not changed.from_cache
    assert changed.rules == ("Shell in a pod",)
    assert changed.revision != first.revision
    rules.write_text(DRY_RUN_RULES)
    assert build().revision == first.revision


def test_an_entry_stored_twice_keeps_the_cache_working(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(DRY_RUN_RULES)
    built = reload.build([str(rules)], default_registry(), tmp_path, child_checks=True)
    cache = BundleCache(tmp_path / "cache")
    for key in ("a" * 64, "a" * 64, "b" * 64):  # the second: another engine stored the same key meanwhile
        cache.put(key, built.path, built.revision, built.summary(), built.warnings)
    assert [p.name for p in _entries(tmp_path / "cache")] == ["a" * 64, "b" * 64]
    entry = cache.get("b" * 64)
    assert entry is not None
    assert entry.revision == built.revision
