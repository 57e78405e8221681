"""The engine's configuration: one tree of frozen dataclasses, loaded once from YAML plus env vars.

Keys and environment variables are Talon's (`listen_port` / `LISTEN_PORT`, `deduplication.time_window_seconds`
/ `DEDUPLICATION_TIME_WINDOW_SECONDS`, ...): an env var is the upper-cased key with `.` → `_`, no prefix,
and wins over the file (viper's precedence: env > file > default). Lists from env are split on `,`.
Notifier settings (`notifiers.<name>.<setting>`) come from the file; an env var overrides a setting only
when the file names it (as with viper). Our own keys (`opa`, `queue`, `auth`, `tls`, `intake`,
`step_timeout_seconds`...) follow the same rules.

One deliberate difference from Talon: `listen_address` defaults to loopback (`127.0.0.1`) unless the
intake authenticates its clients, with a bearer token (`auth.token`) or client certificates
(`tls.client_ca_file`), in which case it defaults to Talon's `0.0.0.0`. Server TLS alone (`tls.cert_file`
without a client CA) encrypts but lets anyone send alerts: it is not authentication. An unauthenticated
intake that can delete pods must not be reachable from the network by accident; set
`listen_address: 0.0.0.0` explicitly to opt in.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from talon_opa.core.errors import TalonError

LOOPBACK = "127.0.0.1"
ANY_ADDRESS = "0.0.0.0"
MIB = 1024 * 1024
# what a dedup key may be built from besides output field names (any other item is an output field)
DEDUP_ALERT_KEYS = ("output", "rule", "priority", "source", "hostname")


MAX_INTAKE_PROCESSES = 64


class ConfigError(TalonError):
    """The configuration is invalid: names the key and what to do."""


@dataclass(frozen=True, slots=True)
class Deduplication:
    """Alerts with the same key within the window are processed once."""

    time_window_seconds: float = 5.0
    """window in seconds; 0 turns deduplication off"""
    key: tuple[str, ...] = ("output",)
    """what makes two alerts the same: "output" (Talon's), "rule", "priority", "source", "hostname" or field names"""
    leader_election: bool = False
    """accepted for Talon compatibility and ignored: deduplication is per engine (no shared queue yet)"""


@dataclass(frozen=True, slots=True)
class Otel:
    """OpenTelemetry export (Prometheus /metrics is always on)."""

    traces_enabled: bool = False
    """export traces by OTLP/HTTP; trace ids are generated either way"""
    metrics_enabled: bool = False
    """accepted for Talon compatibility; metrics are served on /metrics"""
    collector_endpoint: str = "localhost"
    """collector host, or a full base URL (http://host:4318)"""
    collector_port: int = 4318
    """collector OTLP/HTTP port (Talon's 4317 is OTLP/gRPC, which we do not speak)"""
    collector_use_insecure_grpc: bool = False
    """accepted for Talon compatibility; with a bare host, true means http:// instead of https://"""
    timeout: float = 10.0
    """export timeout in seconds"""
    batch_delay_ms: int = 500
    """how long spans wait before they are exported in a batch"""
    service_name: str = "talon-opa"
    """the resource's service.name"""

    def traces_url(self) -> str:
        """The OTLP/HTTP traces endpoint."""
        ep = self.collector_endpoint.rstrip("/")
        if ep.startswith(("http://", "https://")):
            base = ep
        else:
            scheme = "http" if self.collector_use_insecure_grpc or ep in ("localhost", LOOPBACK) else "https"
            base = f"{scheme}://{ep}:{self.collector_port}"
        return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


@dataclass(frozen=True, slots=True)
class Opa:
    """Where decisions come from: a sidecar at `url`, or (default) a child OPA the engine runs."""

    url: str = ""
    """a sidecar's base URL (http://127.0.0.1:8181 or unix:///path/opa.sock), polling our bundle; empty: a child"""
    unix_socket: bool = True
    """the child OPA listens on a unix socket (else on a loopback TCP port)"""
    token: str = ""
    """bearer token for OPA; the child gets a random one when empty"""
    timeout_seconds: float = 2.0
    """deadline of one decision request"""
    retry_initial_seconds: float = 0.05
    """first wait before retrying a decision when OPA is unreachable or answers 5xx"""
    retry_max_seconds: float = 2.0
    """longest wait between retries (alerts stay queued meanwhile)"""
    batch_size: int = 64
    """most alerts decided in one OPA request (those waiting at the same time); 1: one request per alert"""
    requests_in_flight: int = 2
    """decision requests (batches) OPA works on at the same time; alerts waiting meanwhile form the next batch"""
    decide_ahead: bool = True
    """while `queue.workers` plans run, decide up to `batch_size` more alerts, and the alerts waiting behind
    alerts about the same pod (larger batches, less OPA CPU per alert; plans still run in order); never with
    caps limits or JetStream, nor for a pod's waiting alerts with caps that read the pod (docs/rego.md §6)"""
    prefilter: bool = True
    """alerts the served bundle's candidate index has no rule for get the empty plan without an OPA request
    (never with `rego`: your own Rego may add candidates)"""
    gc_percent: int = 0
    """GOGC of the child OPA, 0: the environment's (Go: 100); 400 saves ~1/3 of OPA's CPU for memory (docs/rego.md)"""
    decision_ids: bool = True
    """each decision gets OPA's decision id (on the `decide plan` span), without logging the decision"""
    decision_logs: bool = False
    """the child OPA also writes every decision, input included, to its log (large: for debugging)"""
    bundle_dir: str = ""
    """where translated bundles are written (writable); empty: a private temporary folder"""
    cache_dir: str = ""
    """folder keeping built bundles by content hash: a restart on unchanged rules loads the bundle without
    translating them (docs/performance.md); empty: no cache"""
    ready_timeout_seconds: float = 30.0
    """how long a new child OPA has to load its bundle"""
    rego: tuple[str, ...] = ()
    """the user's own Rego files or folders, added to the bundle beside the translated rules"""
    signing_key: str = ""
    """PEM private key: every bundle is built as a signed .tar.gz (a sidecar verifies it with its key)"""
    verification_key: str = ""
    """PEM public key the child OPA verifies each bundle with (needs signing_key)"""


@dataclass(frozen=True, slots=True)
class Queue:
    """The in-process queue between intake and execution."""

    capacity: int = 10000
    """alerts accepted but not yet started; beyond it intake answers 503 with Retry-After"""
    max_bytes: int = 32 * MIB
    """bodies of the alerts accepted and not finished, in bytes (held ~twice: body and alert); beyond it 503"""
    workers: int = 16
    """alerts whose plans run concurrently (alerts about the same pod never run at the same time); with
    `opa.decide_ahead`, up to `opa.batch_size` more are decided meanwhile"""
    drain_timeout_seconds: float = 30.0
    """on SIGTERM, how long to finish the accepted alerts before stopping"""
    kind: str = "memory"
    """"memory" (one replica) or "nats": accepted alerts go to a NATS JetStream work queue every replica consumes"""
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server(s), comma-separated (with kind: nats); credentials in the URL are secret"""
    nats_stream: str = "TALON_OPA"
    """JetStream stream of accepted alerts (created when missing: work-queue retention, file storage)"""
    partitions: int = 16
    """with kind: nats, alerts are spread by target pod over this many partitions, one alert of each in flight"""
    ack_wait_seconds: float = 30.0
    """with kind: nats, an alert whose replica stops answering is delivered again after this long"""


@dataclass(frozen=True, slots=True)
class Auth:
    """Bearer-token authentication of the intake."""

    token: str = ""
    """the token alerts must carry; empty: no authentication (then listen on loopback only)"""
    header: str = "Authorization"
    """header carrying the token ("Authorization: Bearer <token>", or the bare token in a custom header)"""
    operator_token: str = ""
    """bearer token of the operator API (undo and approvals: `talon-opa undo|approve` and their /v1/ endpoints),
    always sent as "Authorization: Bearer <token>"; empty: the operator API is off (404)"""


@dataclass(frozen=True, slots=True)
class Tls:
    """TLS for the intake; with client_ca_file, clients must present a certificate signed by it."""

    cert_file: str = ""
    """PEM certificate (chain); empty: plain HTTP"""
    key_file: str = ""
    """PEM private key of cert_file"""
    client_ca_file: str = ""
    """PEM CA bundle that client certificates must chain to; empty: no client certificates"""


@dataclass(frozen=True, slots=True)
class Intake:
    """Limits of the HTTP intake."""

    max_body_bytes: int = MIB
    """largest accepted alert body, as sent and once decompressed (gzip, deflate); larger gets 413"""
    read_timeout_seconds: float = 10.0
    """headers must come within this long of connecting or of the last answer (idle ones close), a body too (408)"""
    max_connections: int = 1000
    """open intake connections at most; beyond it a new connection gets 503 and is closed"""
    processes: int = 0
    """intake processes: the engine passes each connection to one of them, which parses, checks and decodes the
    alerts and passes them back to the engine (it still deduplicates, queues, decides and acts): more alerts a
    second on more than one core (one per core); 0: the engine serves every connection; not with TLS
    (docs/performance.md)"""


@dataclass(frozen=True, slots=True)
class Aws:
    """AWS credentials of the aws:* plugins (Talon's keys); empty: the AWS SDK's default credential chain."""

    region: str = ""
    """region of the AWS APIs (static keys are used only when region, access_key and secret_key are all set)"""
    access_key: str = ""
    """static access key id"""
    secret_key: str = ""
    """static secret access key (secret: never logged)"""
    role_arn: str = ""
    """a role to assume with those credentials"""
    external_id: str = ""
    """the external id the role's trust policy asks for"""


@dataclass(frozen=True, slots=True)
class Minio:
    """The MinIO server of the minio:s3 output (Talon's keys)."""

    endpoint: str = ""
    """host:port of the MinIO server"""
    access_key: str = ""
    """access key"""
    secret_key: str = ""
    """secret key (secret: never logged)"""
    use_ssl: bool = False
    """talk HTTPS to the endpoint"""


@dataclass(frozen=True, slots=True)
class Gcp:
    """Google Cloud credentials of the gcp:* plugins (Talon's keys); empty: Application Default Credentials."""

    region: str = ""
    """accepted for Talon compatibility (Talon does not use it either)"""
    credentials_path: str = ""
    """service-account JSON key file (Talon reads this value as the JSON itself: a value starting with { still works)"""


@dataclass(frozen=True, slots=True)
class Audit:
    """The tamper-evident audit trail: one hash-chained JSON line per processed alert (docs/audit.md)."""

    path: str = ""
    """file the trail is appended to, continued across restarts (one file per replica); empty: no audit trail"""
    fsync: bool = True
    """fsync the file after each batch of lines: a crash loses no line already written"""
    buffer: int = 10000
    """lines waiting for the writer; beyond it lines are dropped, counted, and a gap line says how many"""
    unmatched: bool = True
    """also record alerts that matched no rule (a replay against new rules needs them)"""
    required: bool = True
    """while the trail cannot be written /readyz answers 503; false: still ready, the problem in /readyz's body"""
    output: str = ""
    """output the trail is also shipped to, in hash-chained segments: local:file, aws:s3, minio:s3 or gcp:gcs
    (docs/audit.md); empty: not shipped"""
    output_parameters: Mapping[str, Any] = field(default_factory=dict)
    """the output's parameters, as in a rules file's `output.parameters` (destination; bucket, prefix...)"""
    segment_lines: int = 1000
    """a segment is shipped once this many lines are written (a longer backlog goes as several segments)"""
    segment_seconds: float = 60.0
    """or once its first line is this many seconds old; what is left is shipped at shutdown"""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the engine server reads, validated once."""

    listen_address: str = ""
    """interface to listen on; empty: 127.0.0.1, or 0.0.0.0 when auth.token or tls.client_ca_file is set"""
    listen_port: int = 2803
    """port of the intake, /healthz, /readyz and /metrics"""
    rules_files: tuple[str, ...] = ("/etc/falco-talon/rules.yaml",)
    """rules files, merged in order (`-r` replaces this list)"""
    kubeconfig: str = ""
    """kubeconfig file; empty: in-cluster credentials, else every step runs in dry-run"""
    clusters: Mapping[str, str] = field(default_factory=dict)
    """kubeconfig file of each named cluster (clusters.<name>: path); an alert whose `cluster_field` output field
    names one acts on that cluster, an alert without it on the `kubeconfig` one (docs/clusters.md)"""
    cluster_field: str = "cluster"
    """the output field naming an alert's cluster (Falcosidekick's `customfields: cluster:<name>`); read only
    when `clusters` is set"""
    log_format: str = "json"
    """"json" (one object per line), "text" or "color" (Talon's default) for humans"""
    log_level: str = "info"
    """debug, info, warning or error"""
    default_notifiers: tuple[str, ...] = ()
    """notifiers told about every action, besides each rule's own"""
    watch_rules: bool = True
    """reload the rules when a rules file changes (edits, replacements and ConfigMap symlink swaps)"""
    watch_interval_seconds: float = 1.0
    """how often the rules files are checked for changes"""
    allow_empty_rules: bool = False
    """a reload that leaves no rule (an empty or comment-only file) after some rules goes live; false: refused"""
    print_all_events: bool = False
    """log every received alert, matched or not"""
    step_timeout_seconds: float = 30.0
    """deadline of one step (action, its output and its notifications each get this much)"""
    deduplication: Deduplication = field(default_factory=Deduplication)
    """deduplication of alerts"""
    otel: Otel = field(default_factory=Otel)
    """tracing export"""
    opa: Opa = field(default_factory=Opa)
    """the OPA that decides"""
    queue: Queue = field(default_factory=Queue)
    """queue and concurrency"""
    auth: Auth = field(default_factory=Auth)
    """intake authentication"""
    tls: Tls = field(default_factory=Tls)
    """intake TLS"""
    intake: Intake = field(default_factory=Intake)
    """intake limits"""
    aws: Aws = field(default_factory=Aws)
    """AWS credentials (the `aws` client of the aws:* plugins)"""
    minio: Minio = field(default_factory=Minio)
    """MinIO server (the `minio` client of minio:s3)"""
    gcp: Gcp = field(default_factory=Gcp)
    """Google Cloud credentials (the `gcp` client of the gcp:* plugins)"""
    audit: Audit = field(default_factory=Audit)
    """the audit trail"""
    state_dir: str = ""
    """folder keeping what must outlive a restart: pending undos with their TTL and pending approvals (one
    file each, written atomically); empty: kept in memory only, and lost when the engine stops"""
    notifiers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """settings of each notifier, by name (notifiers.<name>.<setting>)"""
    caps: Mapping[str, Any] = field(default_factory=dict)
    """blast-radius caps, written into the bundle as data.talon.caps (docs/caps.md): `limits.<actionner>`
    {per_namespace, window_seconds: 60, 600 or 3600}, `protected_namespaces`, `protected_labels` (label key: value,
    or "*" for any value) and `keep_last_replica` (actionners never run on the last ready replica of a workload)"""
    approvals: Mapping[str, Any] = field(default_factory=dict)
    """steps that wait for an operator's approval (docs/approvals.md): `require` (a list of {actionners, actions,
    rules, namespaces, window_seconds}, written into the bundle as data.talon.approvals), `window_seconds` (default
    900) and `max_pending` (default 100)"""
    undo: Mapping[str, Any] = field(default_factory=dict)
    """automatic undo (docs/undo.md), written into the bundle as data.talon.undo: `ttl_seconds.actionners.<actionner>`
    and `ttl_seconds.rules.<rule>` (the rule's wins), seconds after which a reversible step's change is undone"""
    unknown_keys: tuple[str, ...] = ()
    """keys of the file that mean nothing to us (ignored like Talon does; logged at start)"""

    def secret_values(self) -> list[str]:
        """The values of the secret keys (SECRET_KEYS) and the passwords of URLs in notifier settings
        (`https://user:password@host`), to scrub them from every log line and span."""
        values = [self.auth.token, self.auth.operator_token, self.opa.token, self.aws.secret_key, self.minio.secret_key]
        values += [self.otel.collector_endpoint, self.opa.url]
        values += [v for settings in self.notifiers.values() for v in _strings(settings)]
        out = [v for v in values[:5] if v]
        for v in values[5:]:
            password = _url_password(v)
            if password:
                out += [password, urllib.parse.unquote(password)]
        return out

    @property
    def authentication(self) -> str:
        """How intake clients are authenticated: "token", "mtls", "token+mtls" or "none" (server TLS is not)."""
        kinds = [k for k, on in (("token", self.auth.token), ("mtls", self.tls.client_ca_file)) if on]
        return "+".join(kinds) or "none"

    @property
    def address(self) -> str:
        """The address actually listened on (see `listen_address`)."""
        if self.listen_address:
            return self.listen_address
        return LOOPBACK if self.authentication == "none" else ANY_ADDRESS


def _strings(value: Any) -> list[str]:
    """Every string inside a settings value (nested mappings and lists included)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def _url_password(text: str) -> str:
    """The password of a URL's user info (`scheme://user:password@host`), else ""."""
    scheme, sep, rest = text.partition("://")
    if not sep or not scheme.isidentifier():
        return ""
    userinfo, at, _ = rest.partition("/")[0].rpartition("@")
    if not at:
        return ""
    _, colon, password = userinfo.partition(":")
    return password if colon else ""


# keys whose values never appear in an error message or a log line
SECRET_KEYS = frozenset({"auth.token", "auth.operator_token", "opa.token", "aws.secret_key", "minio.secret_key"})


def load(
    path: str | Path | None,
    env: Mapping[str, str] | None = None,
    *,
    rules: Sequence[str] = (),
) -> Config:
    """Read the config file (optional), apply env vars, then `-r` rules files; ConfigError when invalid."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            doc = yaml.safe_load(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read config file {p}: {e.strerror}", hint="check the -c/--config path") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}", hint="fix the YAML at the place named") from e
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise ConfigError(f"config file {p} is not a mapping", hint="write `key: value` lines at the top level")
        raw = doc
    unknown: list[str] = []
    cfg = _build(Config, raw, env, "", unknown, from_file=True)
    assert isinstance(cfg, Config)
    if rules:
        cfg = dataclasses.replace(cfg, rules_files=tuple(rules))
    cfg = dataclasses.replace(cfg, unknown_keys=tuple(unknown))
    _validate(cfg)
    return cfg


def _env_name(key: str) -> str:
    return key.upper().replace(".", "_")


def _build(
    cls: type[Any], raw: Mapping[str, Any], env: Mapping[str, str], prefix: str, unknown: list[str], from_file: bool
) -> Any:
    hints = typing.get_type_hints(cls)
    by_lower = {str(k).lower(): k for k in raw}  # viper keys are case-insensitive
    known = {f.name for f in dataclasses.fields(cls)}
    for k in raw:
        if str(k).lower() not in known:
            unknown.append(prefix + str(k))
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name == "unknown_keys":
            continue
        key = prefix + f.name
        tp = hints[f.name]
        present = f.name in by_lower
        value = raw[by_lower[f.name]] if present else None
        if dataclasses.is_dataclass(tp):
            if present and value is not None and not isinstance(value, dict):
                raise ConfigError(f"config key {key!r} must be a mapping", hint=f"write `{key}:` with keys under it")
            values[f.name] = _build(tp, value or {}, env, key + ".", unknown, from_file)  # type: ignore[arg-type]
            continue
        if f.name == "notifiers" and prefix == "":
            values[f.name] = _notifiers(value, env)
            continue
        section = _SECTION_PARSERS.get(key)
        if section is not None:  # read from the file only, each by its own parser
            values[f.name] = section(value)
            continue
        if f.name == "output_parameters" and prefix == "audit.":
            if value is not None and not isinstance(value, dict):
                raise ConfigError(
                    "config key 'audit.output_parameters' must be a mapping",
                    hint="write the output's parameters under it, as in a rules file (e.g. bucket: audit)",
                )
            values[f.name] = types.MappingProxyType(dict(value or {}))
            continue
        env_value = _env_lookup(env, key)
        if env_value is not None:
            values[f.name] = _convert(env_value, tp, key, source=f"env {_env_name(key)}")
        elif present and value is not None:
            values[f.name] = _convert(value, tp, key, source="config file")
    return cls(**values)


def _env_lookup(env: Mapping[str, str], key: str) -> str | None:
    value = env.get(_env_name(key))
    if value is None and key == "kubeconfig":
        value = env.get("KUBECONFIG")  # the usual variable (same name as Talon's)
    if key == "kubeconfig" and value:
        # KUBECONFIG may be a list of files: the first one that exists (kubectl merges them; we read one)
        parts = [p for p in value.split(os.pathsep) if p]
        value = next((p for p in parts if Path(p).exists()), parts[0] if parts else "")
    return value


def _notifiers(value: Any, env: Mapping[str, str]) -> Mapping[str, Mapping[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("config key 'notifiers' must be a mapping", hint="write `notifiers:` then `<name>:` blocks")
    out: dict[str, Mapping[str, Any]] = {}
    for name, settings in value.items():
        if settings is None:
            settings = {}
        if not isinstance(settings, dict):
            raise ConfigError(
                f"config key 'notifiers.{name}' must be a mapping", hint="write the notifier's settings under its name"
            )
        merged = {}
        for k, v in settings.items():
            ev = env.get(_env_name(f"notifiers.{name}.{k}"))
            merged[str(k)] = ev if ev is not None else v
        out[str(name)] = types.MappingProxyType(merged)
    return types.MappingProxyType(out)


def _clusters(value: Any) -> Mapping[str, str]:
    """`clusters`: cluster name -> kubeconfig path (from the file only)."""
    if value is None:
        return types.MappingProxyType({})
    if not isinstance(value, dict):
        raise ConfigError(
            "config key 'clusters' must be a mapping", hint="write `clusters:` then `<name>: /path/to/kubeconfig` lines"
        )
    out: dict[str, str] = {}
    for name, path in value.items():
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(
                f"config key 'clusters.{name}' has an invalid value {path!r}: not a path",
                hint="give the path of the cluster's kubeconfig file",
            )
        out[str(name)] = path.strip()
    return types.MappingProxyType(out)


CAPS_KEYS = ("limits", "protected_namespaces", "protected_labels", "keep_last_replica")
CAP_WINDOWS = (60, 600, 3600)  # the sliding windows the engine counts actions in (input.counters)


class _Section:
    """A policy section of the config (`caps:`, `approvals:`, `undo:`): its errors name the key and its doc."""

    def __init__(self, name: str, keys: Sequence[str]) -> None:
        self.name, self.keys = name, tuple(keys)

    def bad(self, what: str) -> ConfigError:
        return ConfigError(f"config key {what}", hint=f"see docs/{self.name}.md for the `{self.name}:` section")

    def checked(self, value: Any) -> dict[str, Any]:
        """The section as a mapping of known keys (ConfigError naming the first unknown one)."""
        if not isinstance(value, dict):
            raise self.bad(f"'{self.name}' must be a mapping")
        for k in value:
            if k not in self.keys:
                raise self.bad(f"'{self.name}.{k}' is unknown ({', '.join(self.keys)})")
        return value


def parse_caps(value: Any) -> Mapping[str, Any]:
    """The `caps:` section, checked (docs/caps.md): `limits` by actionner, `protected_namespaces`,
    `protected_labels`, `keep_last_replica`."""
    if value is None:
        return {}
    section = _Section("caps", CAPS_KEYS)
    bad, value = section.bad, section.checked(value)
    limits = value.get("limits") or {}
    if not isinstance(limits, dict):
        raise bad("'caps.limits' must be a mapping of actionner to {per_namespace, window_seconds}")
    out_limits: dict[str, Any] = {}
    for actionner, limit in limits.items():
        where = f"'caps.limits.{actionner}'"
        if not isinstance(limit, dict) or set(limit) - {"per_namespace", "window_seconds"}:
            raise bad(f"{where} must be a mapping with per_namespace and window_seconds")
        per_ns, window = limit.get("per_namespace"), limit.get("window_seconds", 600)
        if type(per_ns) is not int or per_ns < 0:
            raise bad(f"{where}.per_namespace must be an integer >= 0")
        if window not in CAP_WINDOWS or type(window) is not int:
            raise bad(f"{where}.window_seconds must be one of {', '.join(map(str, CAP_WINDOWS))}")
        out_limits[str(actionner)] = types.MappingProxyType({"per_namespace": per_ns, "window_seconds": window})
    protected = value.get("protected_namespaces") or []
    if not isinstance(protected, list) or not all(isinstance(n, str) for n in protected):
        raise bad("'caps.protected_namespaces' must be a list of namespaces")
    labels = value.get("protected_labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise bad("'caps.protected_labels' must be a mapping of label key to a value, or to \"*\" for any value")
    keep = value.get("keep_last_replica") or []
    if not isinstance(keep, list) or not all(isinstance(a, str) for a in keep):
        raise bad("'caps.keep_last_replica' must be a list of actionners (e.g. [kubernetes:terminate])")
    return types.MappingProxyType(
        {
            "limits": types.MappingProxyType(out_limits),
            "protected_namespaces": tuple(protected),
            "protected_labels": types.MappingProxyType(dict(labels)),
            "keep_last_replica": tuple(keep),
        }
    )


def caps_need_pod(caps: Mapping[str, Any]) -> bool:
    """Whether the caps policy decides from the alert's pod (input.pod: the engine looks it up first)."""
    return bool(caps.get("protected_labels") or caps.get("keep_last_replica"))


def caps_data(caps: Mapping[str, Any]) -> dict[str, Any]:
    """The `caps:` section as the JSON of data.talon.caps."""
    limits = caps.get("limits") or {}
    return {
        "limits": {a: dict(v) for a, v in limits.items()},
        "protected_namespaces": list(caps.get("protected_namespaces") or ()),
        "protected_labels": dict(caps.get("protected_labels") or {}),
        "keep_last_replica": list(caps.get("keep_last_replica") or ()),
    }


APPROVAL_WINDOW = 900  # seconds an approval waits when the config names no window
APPROVAL_MAX_PENDING = 100
_APPROVAL_LISTS = ("actionners", "actions", "rules", "namespaces")


def parse_approvals(value: Any) -> Mapping[str, Any]:
    """The `approvals:` section, checked (docs/approvals.md): `require`, `window_seconds`, `max_pending`."""
    if value is None:
        return {}
    section = _Section("approvals", ("require", "window_seconds", "max_pending"))
    bad, value = section.bad, section.checked(value)

    def seconds(v: Any, where: str) -> int:
        if type(v) is not int or not 1 <= v <= 7 * 86400:
            raise bad(f"{where} must be a whole number of seconds from 1 to 604800 (a week)")
        return int(v)

    window = seconds(value.get("window_seconds", APPROVAL_WINDOW), "'approvals.window_seconds'")
    max_pending = value.get("max_pending", APPROVAL_MAX_PENDING)
    if type(max_pending) is not int or max_pending < 1:
        raise bad("'approvals.max_pending' must be an integer >= 1")
    require = value.get("require") or []
    if not isinstance(require, list):
        raise bad("'approvals.require' must be a list of {actionners, actions, rules, namespaces, window_seconds}")
    out: list[Mapping[str, Any]] = []
    for i, entry in enumerate(require):
        where = f"approvals.require[{i}]"
        if not isinstance(entry, dict) or set(entry) - {*_APPROVAL_LISTS, "window_seconds"}:
            raise bad(
                f"'{where}' must be a mapping of actionners, actions, rules, namespaces (lists) and window_seconds"
            )
        req: dict[str, Any] = {}
        for key in _APPROVAL_LISTS:
            names = entry.get(key) or []
            if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
                raise bad(f"'{where}.{key}' must be a list of names")
            req[key] = tuple(names)
        if not any(req.values()):
            raise bad(f"'{where}' names no actionner, action, rule or namespace (it would hold every step)")
        req["window_seconds"] = seconds(entry.get("window_seconds", window), f"'{where}.window_seconds'")
        out.append(types.MappingProxyType(req))
    return types.MappingProxyType({"require": tuple(out), "window_seconds": window, "max_pending": max_pending})


def approvals_data(approvals: Mapping[str, Any]) -> dict[str, Any]:
    """The `approvals:` section as the JSON of data.talon.approvals (what the policy reads)."""
    return {
        "require": [
            {k: list(v) if k != "window_seconds" else v for k, v in r.items()} for r in approvals.get("require") or ()
        ]
    }


def parse_undo(value: Any) -> Mapping[str, Any]:
    """The `undo:` section, checked (docs/undo.md): `ttl_seconds` by actionner and by rule, in seconds > 0."""
    if value is None:
        return {}
    section = _Section("undo", ("ttl_seconds",))
    bad, value = section.bad, section.checked(value)
    ttl = value.get("ttl_seconds") or {}
    if not isinstance(ttl, dict):
        raise bad("'undo.ttl_seconds' must be a mapping with actionners and rules")
    out: dict[str, Any] = {}
    for by in ttl:
        if by not in ("actionners", "rules"):
            raise bad(f"'undo.ttl_seconds.{by}' is unknown (actionners, rules)")
    for by in ("actionners", "rules"):
        table = ttl.get(by) or {}
        if not isinstance(table, dict):
            raise bad(f"'undo.ttl_seconds.{by}' must be a mapping of name to seconds")
        for name, seconds in table.items():
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < 10**9:
                raise bad(f"'undo.ttl_seconds.{by}.{name}' must be a number of seconds > 0, not {seconds!r}")
        out[by] = types.MappingProxyType({str(k): v for k, v in table.items()})
    return types.MappingProxyType({"ttl_seconds": types.MappingProxyType(out)})


def undo_data(undo: Mapping[str, Any]) -> dict[str, Any]:
    """The `undo:` section as the JSON of data.talon.undo."""
    ttl = undo.get("ttl_seconds") or {}
    return {"ttl_seconds": {by: dict(ttl.get(by) or {}) for by in ("actionners", "rules")}}


_TRUE = {"true", "1", "t", "yes", "y", "on"}
_FALSE = {"false", "0", "f", "no", "n", "off", ""}


def _convert(value: Any, tp: Any, key: str, *, source: str) -> Any:
    """Weak decoding like viper's: "2803" is a port, "a,b" from env is a list, "true" is a bool."""
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError("not a boolean")
        if tp is int:
            if isinstance(value, bool):
                raise ValueError("not an integer")
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("not an integer")
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError("not a number")
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError("not a string")
            return "" if value is None else str(value)
        if origin is tuple:
            if isinstance(value, str):
                items = [v.strip() for v in value.split(",") if v.strip()]
            elif isinstance(value, list):
                items = [str(v) for v in value]
            else:
                raise ValueError("not a list")
            return tuple(items)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"config key {key!r} ({source}) has an invalid value {_shown(key, value)}: {e}",
            hint=f"give a {_type_name(tp)}",
        ) from e
    raise AssertionError(f"unsupported config type {tp} for {key}")


def _shown(key: str, value: Any) -> str:
    return "(secret, not shown)" if key in SECRET_KEYS else repr(value)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return "list (or a comma-separated string in an env var)"
    return {bool: "boolean (true/false)", int: "whole number", float: "number", str: "string"}.get(tp, str(tp))


def _validate(cfg: Config) -> None:
    def bad(key: str, message: str, hint: str) -> ConfigError:
        return ConfigError(f"config key {key!r} {message}", hint=hint)

    if not 0 < cfg.listen_port < 65536:
        raise bad("listen_port", f"is {cfg.listen_port}, not a TCP port", "use a port between 1 and 65535")
    if cfg.log_format not in ("json", "text", "color"):
        # Talon: anything other than color/text is JSON; we say so instead of guessing
        raise bad("log_format", f"is {cfg.log_format!r}", 'use "json", "text" or "color"')
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise bad("log_level", f"is {cfg.log_level!r}", 'use "debug", "info", "warning" or "error"')
    if cfg.auth.operator_token and cfg.auth.operator_token == cfg.auth.token:
        # whoever sends alerts (Falco, Falcosidekick) must not be able to approve or undo responses
        raise bad("auth.operator_token", "is the intake's auth.token", "give the operator API a token of its own")
    if cfg.deduplication.time_window_seconds < 0:
        raise bad("deduplication.time_window_seconds", "is negative", "use 0 (off) or a number of seconds")
    if not cfg.deduplication.key:
        raise bad("deduplication.key", "is empty", 'use e.g. ["output"] (Talon) or ["rule", "k8s.pod.name"]')
    for name, value, low in (
        ("queue.capacity", cfg.queue.capacity, 1),
        ("queue.workers", cfg.queue.workers, 1),
        ("opa.batch_size", cfg.opa.batch_size, 1),
        ("opa.requests_in_flight", cfg.opa.requests_in_flight, 1),
        ("opa.gc_percent", cfg.opa.gc_percent, 0),
        ("intake.max_body_bytes", cfg.intake.max_body_bytes, 1),
        ("audit.buffer", cfg.audit.buffer, 1),
        ("audit.segment_lines", cfg.audit.segment_lines, 1),
        ("intake.max_connections", cfg.intake.max_connections, 1),
        ("intake.processes", cfg.intake.processes, 0),
        ("queue.max_bytes", cfg.queue.max_bytes, cfg.intake.max_body_bytes),
    ):
        if value < low:
            raise bad(name, f"is {value}", f"use a whole number of at least {low}")
    for name, seconds in (
        ("step_timeout_seconds", cfg.step_timeout_seconds),
        ("opa.timeout_seconds", cfg.opa.timeout_seconds),
        ("opa.ready_timeout_seconds", cfg.opa.ready_timeout_seconds),
        ("opa.retry_initial_seconds", cfg.opa.retry_initial_seconds),
        ("opa.retry_max_seconds", cfg.opa.retry_max_seconds),
        ("queue.drain_timeout_seconds", cfg.queue.drain_timeout_seconds),
        ("watch_interval_seconds", cfg.watch_interval_seconds),
        ("otel.timeout", cfg.otel.timeout),
        ("intake.read_timeout_seconds", cfg.intake.read_timeout_seconds),
        ("audit.segment_seconds", cfg.audit.segment_seconds),
    ):
        if seconds <= 0:
            raise bad(name, f"is {seconds}", "use a positive number of seconds")
    if cfg.audit.output and not cfg.audit.path:
        raise bad("audit.output", "is set without audit.path", "set audit.path: the segments are cut from that file")
    if cfg.opa.url and not cfg.opa.url.startswith(("http://", "https://", "unix://")):
        raise bad("opa.url", f"is {cfg.opa.url!r}", "use http://host:port or unix:///path/to/opa.sock")
    for key, f in (("opa.signing_key", cfg.opa.signing_key), ("opa.verification_key", cfg.opa.verification_key)):
        if f and not Path(f).is_file():
            raise bad(key, f"names {f}, which is not a readable file", "give the path of a PEM key file")
    if cfg.opa.verification_key and not cfg.opa.url and not cfg.opa.unix_socket:
        raise bad(
            "opa.verification_key",
            "needs opa.unix_socket: true for the child OPA",
            "a verifying child OPA is reached only through its private unix socket (no token)",
        )
    if cfg.opa.verification_key and not cfg.opa.signing_key:
        raise bad("opa.verification_key", "is set without opa.signing_key", "set both: the engine signs, OPA verifies")
    if bool(cfg.tls.cert_file) != bool(cfg.tls.key_file):
        raise bad("tls.cert_file/tls.key_file", "must be set together", "give both the certificate and its key")
    if cfg.intake.processes > MAX_INTAKE_PROCESSES:
        raise bad(
            "intake.processes", f"is {cfg.intake.processes}", f"use at most {MAX_INTAKE_PROCESSES}, one per spare core"
        )
    if cfg.intake.processes and cfg.tls.cert_file:
        raise bad(
            "intake.processes",
            "is set with tls.cert_file",
            "use intake.processes: 0 with TLS (a TLS connection cannot move between processes), or TLS in front",
        )
    if cfg.tls.client_ca_file and not cfg.tls.cert_file:
        raise bad("tls.client_ca_file", "needs tls.cert_file", "client certificates need TLS: set tls.cert_file")
    for key, f in (("tls.cert_file", cfg.tls.cert_file), ("tls.key_file", cfg.tls.key_file)):
        if f and not Path(f).is_file():
            raise bad(key, f"names {f}, which is not a readable file", "give the path of a PEM file")
    if cfg.tls.client_ca_file and not Path(cfg.tls.client_ca_file).is_file():
        raise bad("tls.client_ca_file", f"names {cfg.tls.client_ca_file}, which is not a file", "give a PEM CA bundle")
    if cfg.queue.kind not in ("memory", "nats"):
        raise bad("queue.kind", f"is {cfg.queue.kind!r}", 'use "memory" (one replica) or "nats" (replicas)')
    if cfg.queue.kind == "nats" and not cfg.queue.nats_url.startswith(("nats://", "tls://")):
        raise bad("queue.nats_url", f"is {cfg.queue.nats_url!r}", "use nats://host:4222 (or tls://host:4222)")
    if cfg.queue.partitions < 1:
        raise bad("queue.partitions", f"is {cfg.queue.partitions}", "use a whole number of at least 1")
    if cfg.queue.ack_wait_seconds <= 0:
        raise bad("queue.ack_wait_seconds", f"is {cfg.queue.ack_wait_seconds}", "use a positive number of seconds")
    if cfg.opa.token and not all("!" <= c <= "~" for c in cfg.opa.token):
        raise bad("opa.token", "holds a space, a control or a non-ASCII character", "use printable ASCII only")
    if not cfg.auth.header.strip():
        raise bad("auth.header", "is empty", 'use "Authorization" or a custom header name')
    if not cfg.rules_files:
        raise bad("rules_files", "is empty", "give at least one rules file (-r rules.yaml)")
    for name, path in cfg.clusters.items():
        if not name.strip():
            raise bad("clusters", "has an empty cluster name", "name each cluster as its alerts do (cluster:<name>)")
        if not Path(path).is_file():
            raise bad(f"clusters.{name}", f"names {path}, which is not a readable file", "give a kubeconfig file")
    if cfg.clusters and not cfg.cluster_field.strip():
        raise bad("cluster_field", "is empty while clusters is set", 'name the output field, e.g. "cluster"')


# the top-level sections read from the file only, each by its own parser (no env override)
_SECTION_PARSERS: dict[str, Callable[[Any], Any]] = {
    "clusters": _clusters,
    "caps": parse_caps,
    "approvals": parse_approvals,
    "undo": parse_undo,
}
