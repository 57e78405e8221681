"""/metrics: Talon's five counters by their names (existing dashboards work), our histograms and gauges,
and labels that never carry the alert's text."""

from __future__ import annotations

from pathlib import Path

from talon_opa.core import config
from tests.e2e.engine_harness import DRY_RUN_RULES, running_engine, shell_alert


async def test_metrics_expose_talons_counters_and_ours_with_low_cardinality_labels(tmp_path: Path) -> None:
    async with running_engine(tmp_path, DRY_RUN_RULES) as e:
        secret_text = "08:21:07.114583261: Notice unique-output-text-that-must-not-become-a-label"
        await e.post(json_body=shell_alert("m-1", output=secret_text))
        await e.post(json_body=shell_alert("m-1", output=secret_text))  # a duplicate
        await e.post(data=b"{", headers={"Content-Type": "application/json"})
        await e.drained()
        async with e.http.get(e.url + "/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
        for name in ("events", "matches", "actions", "notifications", "outputs"):
            assert f"# TYPE falcosecurity_falco_talon_{name}_total counter" in text or (
                f"# TYPE falcosecurity_falco_talon_{name} counter" in text
            )
        for name in (
            "talon_opa_decision_duration_seconds_bucket",
            "talon_opa_action_duration_seconds",
            "talon_opa_queue_depth",
            "talon_opa_dedup_hits_total",
            "talon_opa_opa_errors",
            "talon_opa_intake_rejected_total",
            "talon_opa_bundle_info",
        ):
            assert name in text, name
        assert "unique-output-text" not in text
        assert (
            await e.metric(
                "falcosecurity_falco_talon_events_total",
                event="Terminal shell in container",
                priority="Notice",
                source="syscall",
            )
            == 2
        )
        assert await e.metric("talon_opa_dedup_hits_total") == 1
        assert await e.metric("falcosecurity_falco_talon_matches_total", rule="Shell in a container") == 1
        assert await e.metric("talon_opa_decision_duration_seconds_count") == 1
        assert await e.metric("talon_opa_intake_rejected_total", status="400") == 1
        assert e.engine.built is not None
        assert await e.metric("talon_opa_bundle_info", revision=e.engine.built.revision) == 1


async def test_alert_values_cannot_grow_the_label_space(tmp_path: Path) -> None:
    async with running_engine(tmp_path, DRY_RUN_RULES, deduplication=config.Deduplication(key=("rule",))) as e:
        before = len(await e.metrics())
        for i in range(300):
            alert = shell_alert(f"card-{i}") | {
                "rule": f"unknown rule {i} " + "x" * 5000,
                "priority": f"prio-{i}",
                "source": f"source-{i}",
            }
            assert (await e.post(json_body=alert)).status == 200
        assert (await e.post(json_body=shell_alert("card-known") | {"priority": "warning"})).status == 200
        await e.drained()
        text = await e.metrics()
        assert len(text) < before + 20_000  # 301 alerts, a handful of new series
        assert "unknown rule" not in text
        assert "prio-" not in text
        assert "source-" not in text
        events = "falcosecurity_falco_talon_events_total"
        assert await e.metric(events, event="other", priority="other", source="other") == 300
        assert await e.metric(events, event="Terminal shell in container", priority="Warning", source="syscall") == 1

        # a Falco rule becomes a label of its own once a loaded rule names it
        e.rules.write_text(
            DRY_RUN_RULES.replace("- Terminal shell in container", "- Terminal shell in container\n      - Mine")
        )
        assert await e.engine.reload()
        assert (await e.post(json_body=shell_alert("card-mine") | {"rule": "Mine", "source": "okta"})).status == 200
        await e.drained()
        assert await e.metric(events, event="Mine", priority="Notice", source="okta") == 1
