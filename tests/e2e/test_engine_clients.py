"""Plugins get exactly the clients their specs declare, built from the configuration; a client the rules
need but the configuration lacks stops the engine at start, naming the key to set."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from talon_opa.core import config
from talon_opa.core.errors import TalonError
from talon_opa.core.events import Alert
from talon_opa.core.kube import KubeConfig
from talon_opa.plugins.params import NoParams
from talon_opa.plugins.registry import Registry
from talon_opa.plugins.runtime import Actionner, Outcome, Planned
from talon_opa.plugins.spec import Spec
from tests.e2e.engine_harness import running_engine, shell_alert

UNUSED_KUBE = KubeConfig(server="http://127.0.0.1:9")  # never called; the engine is not in dry-run
SEEN: list[Any] = []


class Upload(Actionner[NoParams]):
    """Reads the MinIO client it declares."""

    spec: ClassVar[Spec[Any]] = Spec(
        name="test:upload", kind="actionner", description="uses minio", params=NoParams, clients=("minio",)
    )

    async def run(self, alert: Alert, params: NoParams) -> Outcome:
        SEEN.append(self.clients.minio)
        return Outcome.done("uploaded")


class Sneaky(Actionner[NoParams]):
    """Reads a client it did not declare."""

    spec: ClassVar[Spec[Any]] = Spec(name="test:sneaky", kind="actionner", description="no clients", params=NoParams)

    async def run(self, alert: Alert, params: NoParams) -> Outcome:
        SEEN.append(self.clients.kube)
        return Outcome.done("unreachable")


class Later(Planned):
    spec: ClassVar[Spec[Any]] = Spec(
        name="test:later", kind="actionner", description="planned", params=NoParams, clients=("gcp",)
    )


REGISTRY = Registry.of(Upload, Sneaky, Later)


def rules(actionner: str) -> str:
    return f"""\
- rule: One step
  match: {{rules: [Terminal shell in container]}}
  actions:
    - action: Step
      actionner: {actionner}
"""


async def test_a_client_the_rules_need_but_the_config_lacks_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as e:
        async with running_engine(tmp_path, rules("test:upload"), registry=REGISTRY, kube_config=UNUSED_KUBE):
            pass
    assert "test:upload needs minio: config key 'minio.endpoint' is empty" in str(e.value)
    assert "set minio.endpoint in the configuration" in str(e.value)


async def test_a_configured_client_is_handed_to_the_plugin(tmp_path: Path) -> None:
    SEEN.clear()
    minio = config.Minio(endpoint="127.0.0.1:9000", access_key="ak", secret_key="sk-long-enough")
    async with running_engine(
        tmp_path, rules("test:upload"), registry=REGISTRY, kube_config=UNUSED_KUBE, minio=minio
    ) as engine:
        assert (await engine.post("/", json_body=shell_alert())).status == 200
        await engine.drained()
    [client] = SEEN
    assert client.cfg == minio  # the MinIO client built from exactly that configuration
    assert client.endpoint_url == "http://127.0.0.1:9000"


async def test_a_plugin_reading_a_client_it_did_not_declare_fails_its_step(tmp_path: Path) -> None:
    SEEN.clear()
    async with running_engine(tmp_path, rules("test:sneaky"), registry=REGISTRY, kube_config=UNUSED_KUBE) as engine:
        assert (await engine.post("/", json_body=shell_alert())).status == 200
        await engine.drained()
        failed = await engine.metric(
            "falcosecurity_falco_talon_actions_total", actionner="test:sneaky", status="failure"
        )
    assert failed == 1
    assert SEEN == []


async def test_a_plugin_that_cannot_run_yet_needs_no_client_at_start(tmp_path: Path) -> None:
    async with running_engine(tmp_path, rules("test:later"), registry=REGISTRY, kube_config=UNUSED_KUBE) as engine:
        assert (await engine.get("/readyz")).status == 200


def test_talons_aws_minio_and_gcp_keys_configure_the_clients(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "aws: {region: eu-west-1, access_key: AKIA, secret_key: s3cr3t-key, role_arn: arn:aws:iam::1:role/r}\n"
        "minio: {endpoint: minio:9000, access_key: a, secret_key: b, use_ssl: true}\n"
        "gcp: {credentials_path: /nonexistent.json}\n"
    )
    cfg = config.load(path, {})
    assert (cfg.aws.region, cfg.aws.role_arn, cfg.minio.use_ssl) == ("eu-west-1", "arn:aws:iam::1:role/r", True)
    assert cfg.unknown_keys == ()
    assert "s3cr3t-key" in cfg.secret_values()
    with pytest.raises(TalonError):
        config.load(tmp_path / "missing.yaml", {})


class Cloud(Actionner[NoParams]):
    """Needs no Kubernetes client (like aws:lambda)."""

    spec: ClassVar[Spec[Any]] = Spec(name="test:cloud", kind="actionner", description="no kube", params=NoParams)

    async def run(self, alert: Alert, params: NoParams) -> Outcome:
        SEEN.append("cloud ran")
        return Outcome.done("called the cloud")


class Kube(Actionner[NoParams]):
    spec: ClassVar[Spec[Any]] = Spec(
        name="test:kube", kind="actionner", description="kube", params=NoParams, clients=("kube",)
    )

    async def run(self, alert: Alert, params: NoParams) -> Outcome:
        SEEN.append("kube ran")
        return Outcome.done("patched")


async def test_without_kubernetes_only_the_kubernetes_steps_run_in_dry_run(tmp_path: Path) -> None:
    SEEN.clear()
    two = """\
- rule: Both
  match: {rules: [Terminal shell in container]}
  actions:
    - action: Kube step
      actionner: test:kube
    - action: Cloud step
      actionner: test:cloud
"""
    async with running_engine(tmp_path, two, registry=Registry.of(Cloud, Kube), kube_config=None) as engine:
        assert (await engine.post("/", json_body=shell_alert())).status == 200
        await engine.drained()
        actions = "falcosecurity_falco_talon_actions_total"
        assert await engine.metric(actions, actionner="test:kube", status="dry_run") == 1
        assert await engine.metric(actions, actionner="test:cloud", status="success") == 1
    assert SEEN == ["cloud ran"]
