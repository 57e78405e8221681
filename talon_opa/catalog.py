"""Every plugin talon-opa ships: the one line to add for a new actionner, output or notifier.

The layer above the plugins: it imports them all, and only the engine and the CLI import it.
"""

from __future__ import annotations

from talon_opa.actionners.aws import lambda_
from talon_opa.actionners.calico import networkpolicy as calico_networkpolicy
from talon_opa.actionners.cilium import networkpolicy as cilium_networkpolicy
from talon_opa.actionners.gcp import function
from talon_opa.actionners.kubernetes import (
    annotation,
    cordon,
    delete,
    download,
    drain,
    exec,
    label,
    log,
    networkpolicy,
    script,
    sysdig,
    tcpdump,
    terminate,
)
from talon_opa.notifiers import elasticsearch, k8sevents, loki, slack, smtp, webhook
from talon_opa.outputs import file, gcs, minio, s3
from talon_opa.plugins.registry import Registry


def default_registry() -> Registry:
    """Every plugin talon-opa ships."""
    return Registry.of(
        terminate.Terminate,
        label.Label,
        annotation.Annotation,
        networkpolicy.NetworkPolicy,
        exec.Exec,
        script.Script,
        log.Log,
        delete.Delete,
        cordon.Cordon,
        drain.Drain,
        download.Download,
        tcpdump.Tcpdump,
        sysdig.Sysdig,
        lambda_.Lambda,
        function.Function,
        calico_networkpolicy.CalicoNetworkPolicy,
        cilium_networkpolicy.CiliumNetworkPolicy,
        file.File,
        minio.Minio,
        s3.S3,
        gcs.Gcs,
        k8sevents.K8sEvents,
        slack.Slack,
        smtp.Smtp,
        webhook.Webhook,
        loki.Loki,
        elasticsearch.Elasticsearch,
    )
