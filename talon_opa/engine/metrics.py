"""Prometheus metrics: Talon's five counters (so existing dashboards work) plus the engine's own.

Each engine has its own CollectorRegistry (tests run several engines in one process). Labels stay
low-cardinality: Falco rule, Talon rule, action, actionner, notifier, target, status; never the alert's
output text nor object names. The three labels that come from the alert itself are bounded (docs/metrics.md):
`event` is the alert's Falco rule only when a loaded rule's `match.rules` names it, `priority` one of
Falco's priority names, `source` a source the rules name or a well-known Falco source; anything else is
counted under `other`, so no alert can add a series of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from talon_opa.core import priorities

TALON = "falcosecurity_falco_talon"
OURS = "talon_opa"
CONTENT_TYPE = CONTENT_TYPE_LATEST

OTHER = "other"  # the label value of every alert value that is not known
MAX_LABEL_CHARS = 200  # a known value longer than this (a rules-file name can be long) is cut
# Falco's event sources (the syscall source and its plugins' sources), known without a rule naming them
FALCO_SOURCES = frozenset(
    {"syscall", "k8s_audit", "k8saudit", "k8saudit-eks", "k8saudit-gke", "aws_cloudtrail", "gcp_auditlog", "okta"}
    | {"github", "k8saudit-aks", "k8saudit-ovh"}
)
_PRIORITIES = {name.lower(): name for name in priorities.NAMES}

EVENT_KEYS = 4096  # alerts' (rule, priority, source) whose counter is remembered (forgotten all at once beyond)
_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Every metric of one engine, registered in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        # Talon's counters (the client adds `_total`)
        self.events = Counter(
            f"{TALON}_events", "Alerts received (before deduplication)", ["event", "priority", "source"], registry=r
        )
        self.matches = Counter(
            f"{TALON}_matches",
            "Rules matched, once per matching rule",
            ["rule", "event", "priority", "source"],
            registry=r,
        )
        self.actions = Counter(
            f"{TALON}_actions",
            "Steps run, by result (success, failure, ignored, dry_run)",
            ["rule", "action", "actionner", "status"],
            registry=r,
        )
        self.notifications = Counter(
            f"{TALON}_notifications",
            "Notifications sent, by result",
            ["rule", "action", "actionner", "notifier", "status"],
            registry=r,
        )
        self.outputs = Counter(
            f"{TALON}_outputs", "Artifacts written to an output, by result", ["action", "target", "status"], registry=r
        )
        # ours
        self.decision_seconds = Histogram(
            f"{OURS}_decision_duration_seconds",
            "Decision latency (engine → plan), by what decided: opa, or index (no rule can match, docs/rego.md)",
            ["by"],
            buckets=_FAST,
            registry=r,
        )
        self.action_seconds = Histogram(
            f"{OURS}_action_duration_seconds",
            "Duration of a step's action",
            ["actionner", "status"],
            buckets=_SLOW,
            registry=r,
        )
        self.queue_depth = Gauge(f"{OURS}_queue_depth", "Alerts accepted and not yet started", registry=r)
        self.in_flight = Gauge(f"{OURS}_alerts_in_flight", "Alerts being decided or executed", registry=r)
        self.dedup_hits = Counter(f"{OURS}_dedup_hits", "Alerts skipped as duplicates within the window", registry=r)
        self.opa_errors = Counter(
            f"{OURS}_opa_errors", "OPA failures (unreachable, 5xx, bad answer, child exit)", ["kind"], registry=r
        )
        self.rejected = Counter(
            f"{OURS}_intake_rejected", "Alerts refused at intake, by HTTP status", ["status"], registry=r
        )
        self.intake_processes = Gauge(
            f"{OURS}_intake_processes", "Intake processes running beside the engine (intake.processes)", registry=r
        )
        self.intake_process_alerts = Counter(
            f"{OURS}_intake_process_alerts",
            "Alerts an intake process passed to the engine, by process",
            ["process"],
            registry=r,
        )
        self.intake_process_exits = Counter(
            f"{OURS}_intake_process_exits", "Intake processes that exited while the engine ran", registry=r
        )
        self.reloads = Counter(
            f"{OURS}_rules_reloads",
            "Rules reloads, by result (success, unchanged, failure, refused_empty)",
            ["status"],
            registry=r,
        )
        self.rules_active = Gauge(f"{OURS}_rules_active", "Talon rules in the active rule set", registry=r)
        self.alerts_failed = Counter(
            f"{OURS}_alerts_failed", "Alerts whose processing failed before or outside a step", ["stage"], registry=r
        )
        self.bundle_info = Gauge(
            f"{OURS}_bundle_info", "The bundle revision in use (value 1)", ["revision"], registry=r
        )

        self._events: dict[tuple[str, str, str], Counter] = {}  # bounded labels → child
        self._event_incs: dict[tuple[str, str, str], Callable[[], None]] = {}  # alert's values → its child's inc
        self._known_events: frozenset[str] = frozenset()
        self._known_sources: frozenset[str] = FALCO_SOURCES

    def set_known(self, events: Iterable[str], sources: Iterable[str]) -> None:
        """The Falco rule names and sources the loaded rules name: the only alert values used as labels."""
        self._known_events = frozenset(events)
        self._known_sources = FALCO_SOURCES | frozenset(sources)
        self._events = {}
        self._event_incs = {}

    def alert_labels(self, rule: str, priority: str, source: str) -> tuple[str, str, str]:
        """The bounded `event`, `priority` and `source` labels of an alert."""
        return (
            rule[:MAX_LABEL_CHARS] if rule in self._known_events else OTHER,
            _PRIORITIES.get(priority.lower(), OTHER),
            source[:MAX_LABEL_CHARS] if source in self._known_sources else OTHER,
        )

    def count_event(self, rule: str, priority: str, source: str) -> None:
        """One alert received (`events`): one lookup by the alert's own values, its labels worked out once."""
        values = (rule, priority, source)
        inc = self._event_incs.get(values)
        if inc is None:
            key = self.alert_labels(rule, priority, source)
            child = self._events.get(key)
            if child is None:
                child = self._events[key] = self.events.labels(*key)
            if len(self._event_incs) >= EVENT_KEYS:  # the values come from alerts: keep the memory bounded
                self._event_incs = {}
            inc = self._event_incs[values] = child.inc
        inc()

    def count_match(self, talon_rule: str, rule: str, priority: str, source: str) -> None:
        """One rule matched an alert (`matches`): the Talon rule, then the alert's bounded labels."""
        self.matches.labels(talon_rule, *self.alert_labels(rule, priority, source)).inc()

    def set_revision(self, revision: str) -> None:
        self.bundle_info.clear()
        self.bundle_info.labels(revision=revision).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
