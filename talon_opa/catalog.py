"""Every plugin talon-opa ships: the one line to add for a new actionner, output or notifier.

The layer above the plugins. Each line names a plugin's kind, its name and the module and class that hold
it: the registry imports that module the first time the plugin is looked up, so a start imports only the
plugins its rules and config use (`talon_opa.plugins.registry`). Only the engine and the CLI import this.
tests/test_registry.py imports every line and checks that the class declares that kind and name.
"""

from __future__ import annotations

from talon_opa.plugins.registry import Registry


def default_registry() -> Registry:
    """Every plugin talon-opa ships, in listing order (Talon's order for `actionners list`)."""
    return Registry.shipped(
        ("actionner", "kubernetes:terminate", "talon_opa.actionners.kubernetes.terminate:Terminate"),
        ("actionner", "kubernetes:label", "talon_opa.actionners.kubernetes.label:Label"),
        ("actionner", "kubernetes:annotation", "talon_opa.actionners.kubernetes.annotation:Annotation"),
        ("actionner", "kubernetes:networkpolicy", "talon_opa.actionners.kubernetes.networkpolicy:NetworkPolicy"),
        ("actionner", "kubernetes:exec", "talon_opa.actionners.kubernetes.exec:Exec"),
        ("actionner", "kubernetes:script", "talon_opa.actionners.kubernetes.script:Script"),
        ("actionner", "kubernetes:log", "talon_opa.actionners.kubernetes.log:Log"),
        ("actionner", "kubernetes:delete", "talon_opa.actionners.kubernetes.delete:Delete"),
        ("actionner", "kubernetes:cordon", "talon_opa.actionners.kubernetes.cordon:Cordon"),
        ("actionner", "kubernetes:drain", "talon_opa.actionners.kubernetes.drain:Drain"),
        ("actionner", "kubernetes:download", "talon_opa.actionners.kubernetes.download:Download"),
        ("actionner", "kubernetes:tcpdump", "talon_opa.actionners.kubernetes.tcpdump:Tcpdump"),
        ("actionner", "kubernetes:sysdig", "talon_opa.actionners.kubernetes.sysdig:Sysdig"),
        ("actionner", "aws:lambda", "talon_opa.actionners.aws.lambda_:Lambda"),
        ("actionner", "gcp:function", "talon_opa.actionners.gcp.function:Function"),
        ("actionner", "calico:networkpolicy", "talon_opa.actionners.calico.networkpolicy:CalicoNetworkPolicy"),
        ("actionner", "cilium:networkpolicy", "talon_opa.actionners.cilium.networkpolicy:CiliumNetworkPolicy"),
        ("output", "local:file", "talon_opa.outputs.file:File"),
        ("output", "minio:s3", "talon_opa.outputs.minio:Minio"),
        ("output", "aws:s3", "talon_opa.outputs.s3:S3"),
        ("output", "gcp:gcs", "talon_opa.outputs.gcs:Gcs"),
        ("notifier", "k8sevents", "talon_opa.notifiers.k8sevents:K8sEvents"),
        ("notifier", "slack", "talon_opa.notifiers.slack:Slack"),
        ("notifier", "smtp", "talon_opa.notifiers.smtp:Smtp"),
        ("notifier", "webhook", "talon_opa.notifiers.webhook:Webhook"),
        ("notifier", "loki", "talon_opa.notifiers.loki:Loki"),
        ("notifier", "elasticsearch", "talon_opa.notifiers.elasticsearch:Elasticsearch"),
    )
