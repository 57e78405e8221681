"""The clients a plugin declares and is handed, built from the configuration.

A spec names the clients its plugin needs (`clients=("kube",)`); the engine's `ClientProvider` checks,
for every plugin the rules use, that each declared client is configured (else a startup or reload error
naming the config key to set) and hands the plugin a `Clients` holding exactly those. A plugin reading a
client it did not declare is a bug, reported as such.

| client | configured by | what the plugin gets |
| --- | --- | --- |
| `http` | nothing (one pooled session per engine) | `aiohttp.ClientSession` |
| `kube` | `kubeconfig` (or in-cluster), `clusters.<name>` | `KubeClient` (the alert's cluster's, see below) |
| `aws` | `aws.*` (Talon's keys), else the AWS SDK's default chain | `core.aws.Aws` (boto3, off the loop) |
| `minio` | `minio.*` (Talon's keys) | `core.aws.Minio` (the same S3 client, path-style) |
| `gcp` | `gcp.*` (Talon's keys), else Application Default Credentials | `core.gcp.Gcp` (google-auth + aiohttp) |

The cloud clients are built once per engine, when `check` finds a plugin of the rules that declares
them (at start or reload, so their SDKs are never imported in the middle of a step), and talk to the
network only when a step runs (a bad key fails that step with the provider's reason). Their SDKs
(boto3, google-auth) are imported only then: they cost up to a second of start-up that an engine whose
rules use no cloud plugin should not pay.

With `clusters` set, the engine holds one `KubeClient` per named cluster beside the default one, and a
plugin that declares `kube` is built once per cluster (`clients_for(spec, cluster)`): the alert's cluster
field picks which (`talon_opa.engine.execute`). Without a default and without `clusters`, every
Kubernetes step runs in dry-run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from talon_opa.core import config
from talon_opa.core.errors import StepFailed, TalonError

if TYPE_CHECKING:
    import aiohttp

    from talon_opa.core.aws import Aws, Minio
    from talon_opa.core.gcp import Gcp
    from talon_opa.core.kube import KubeClient
    from talon_opa.plugins.spec import Spec


@dataclass(frozen=True, slots=True)
class ClientKind:
    """A client plugins may declare: its name, the config key that sets it up, and what it is."""

    name: str
    config_key: str
    doc: str
    check: Callable[[config.Config], None] = lambda cfg: None  # raises config.ConfigError naming the key


def _bad(key: str, message: str, hint: str) -> config.ConfigError:
    return config.ConfigError(f"config key {key!r} {message}", hint=hint)


def _check_aws(cfg: config.Config) -> None:
    aws = cfg.aws
    if bool(aws.access_key) != bool(aws.secret_key):
        raise _bad(
            "aws.access_key" if not aws.access_key else "aws.secret_key",
            "is missing while the other half of the static key is set",
            "set both aws.access_key and aws.secret_key (and aws.region), or neither to use the default chain",
        )
    if aws.access_key and not aws.region:
        raise _bad("aws.region", "is empty while static keys are set", "set aws.region (Talon uses the keys only then)")
    if aws.external_id and not aws.role_arn:
        raise _bad("aws.external_id", "is set without aws.role_arn", "set aws.role_arn, the role to assume")


def _check_minio(cfg: config.Config) -> None:
    minio = cfg.minio
    for key, value in (
        ("minio.endpoint", minio.endpoint),
        ("minio.access_key", minio.access_key),
        ("minio.secret_key", minio.secret_key),
    ):
        if not value:
            raise _bad(key, "is empty", f"set {key} in the configuration (the MinIO server and its credentials)")


def _check_gcp(cfg: config.Config) -> None:
    path = cfg.gcp.credentials_path
    if path and not path.lstrip().startswith("{") and not Path(path).is_file():
        raise _bad(
            "gcp.credentials_path",
            f"names {path}, which is not a readable file",
            "give a service-account JSON key file (or leave it empty for Application Default Credentials)",
        )


CLOUD = ("aws", "minio", "gcp")  # built on demand, their SDKs imported only then

KINDS: Mapping[str, ClientKind] = {
    kind.name: kind
    for kind in (
        ClientKind("http", "", "the engine's pooled HTTP session"),
        ClientKind("kube", "kubeconfig", "the Kubernetes API (kubeconfig file, or in-cluster credentials)"),
        ClientKind("aws", "aws", "AWS (Talon's aws.* keys, else the SDK's default credential chain)", _check_aws),
        ClientKind("minio", "minio", "a MinIO server (minio.endpoint, access_key, secret_key, use_ssl)", _check_minio),
        ClientKind("gcp", "gcp", "Google Cloud (gcp.credentials_path, else default credentials)", _check_gcp),
    )
}


class Clients:
    """The clients one plugin declared, by name; reading an undeclared one is a bug."""

    def __init__(self, owner: str, available: Mapping[str, Any]) -> None:
        self._owner = owner
        self._available = dict(available)

    def _get(self, name: str) -> Any:
        if name not in self._available:
            raise TalonError(
                f"{self._owner} uses the client {name!r} without declaring it",
                hint=f"add {name!r} to the `clients` of its spec",
            )
        return self._available[name]

    @property
    def http(self) -> aiohttp.ClientSession:
        session: aiohttp.ClientSession = self._get("http")
        return session

    @property
    def kube(self) -> KubeClient:
        kube: KubeClient | None = self._get("kube")
        if kube is None:
            raise StepFailed(
                f"{self._owner} needs a Kubernetes client and none is configured",
                hint="run talon-opa in the cluster or set `kubeconfig` in the configuration",
            )
        return kube

    @property
    def aws(self) -> Aws:
        aws: Aws = self._get("aws")()
        return aws

    @property
    def minio(self) -> Minio:
        minio: Minio = self._get("minio")()
        return minio

    @property
    def gcp(self) -> Gcp:
        gcp: Gcp = self._get("gcp")()
        return gcp


class ClientProvider:
    """Builds each plugin's `Clients` from the configuration and the engine's shared clients."""

    def __init__(
        self,
        cfg: config.Config,
        *,
        http: aiohttp.ClientSession,
        kube: KubeClient | None,
        clusters: Mapping[str, KubeClient] | None = None,
    ) -> None:
        self._cfg = cfg
        self._http = http
        self.default_kube = kube
        self.clusters: Mapping[str, KubeClient] = dict(clusters or {})
        self._lazy: dict[str, Any] = {}
        self._shared: dict[str, Any] = {
            "http": http,
            "kube": kube,
            "aws": lambda: self._built("aws"),
            "minio": lambda: self._built("minio"),
            "gcp": lambda: self._built("gcp"),
        }

    def _built(self, name: str) -> Any:
        """The one cloud client of this name, built on first use (its SDK imported only then)."""
        if name not in self._lazy:
            if name == "gcp":
                from talon_opa.core import gcp

                self._lazy[name] = gcp.Gcp(self._cfg.gcp, self._http)
            else:
                from talon_opa.core import aws

                self._lazy[name] = aws.Aws(self._cfg.aws) if name == "aws" else aws.Minio(self._cfg.minio)
        return self._lazy[name]

    def check(self, specs: Iterable[Spec[Any]]) -> None:
        """Every client these plugins declare is configured; ConfigError naming the key otherwise."""
        for spec in specs:
            for name in spec.clients:
                try:
                    KINDS[name].check(self._cfg)
                except config.ConfigError as e:
                    raise config.ConfigError(f"{spec.name} needs {name}: {e.args[0]}", hint=e.hint) from e
                if name in CLOUD:
                    self._built(name)  # its SDK is imported now, at start, not in the middle of a step

    def clients_for(self, spec: Spec[Any], cluster: str | None = None) -> Clients:
        """The clients of `spec`; its `kube` is the named cluster's (one of `clusters`), else the default."""
        available = {name: self._shared[name] for name in spec.clients}
        if cluster is not None and "kube" in available:
            available["kube"] = self.clusters[cluster]
        return Clients(spec.name, available)
