"""The `events` counter, counted by each alert's own values: the right labels, in bounded memory."""

from __future__ import annotations

from talon_opa.engine import metrics
from talon_opa.engine.metrics import Metrics


def events(m: Metrics, event: str, priority: str = "Critical", source: str = "syscall") -> float | None:
    return m.registry.get_sample_value(
        "falcosecurity_falco_talon_events_total", {"event": event, "priority": priority, "source": source}
    )


def test_alerts_are_counted_under_their_bounded_labels_whatever_values_they_bring() -> None:
    m = Metrics()
    m.set_known(["Known rule"], [])
    for i in range(metrics.EVENT_KEYS + 10):  # more distinct rules than values remembered
        m.count_event(f"rule {i}", "Critical", "syscall")
    m.count_event("Known rule", "critical", "syscall")
    m.count_event("Known rule", "CRITICAL", "syscall")
    m.count_event("Known rule", "critical", "a source no rule names")
    assert events(m, "other") == metrics.EVENT_KEYS + 10
    assert events(m, "Known rule") == 2
    assert events(m, "Known rule", source="other") == 1
    assert len(m._event_incs) <= metrics.EVENT_KEYS
    m.set_known(["rule 1"], [])  # new rules: a value counted under `other` before is now a label of its own
    m.count_event("rule 1", "Critical", "syscall")
    assert events(m, "rule 1") == 1
    assert events(m, "other") == metrics.EVENT_KEYS + 10
