"""Configuration: Talon's keys and env vars, our defaults, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from talon_opa.core import config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_defaults_are_talons_except_a_loopback_listener() -> None:
    cfg = config.load(None, {})
    assert (cfg.listen_port, cfg.watch_rules, cfg.print_all_events) == (2803, True, False)
    assert cfg.deduplication.time_window_seconds == 5
    assert cfg.deduplication.key == ("output",)
    assert cfg.intake.max_body_bytes == 1024 * 1024
    assert cfg.address == "127.0.0.1"
    assert config.load(None, {"AUTH_TOKEN": "t"}).address == "0.0.0.0"
    assert config.load(None, {"LISTEN_ADDRESS": "0.0.0.0"}).address == "0.0.0.0"


def test_only_a_token_or_client_certificates_count_as_authentication(tmp_path: Path) -> None:
    for name in ("c.pem", "k.pem", "ca.pem"):
        (tmp_path / name).write_text("-")
    tls = {"TLS_CERT_FILE": str(tmp_path / "c.pem"), "TLS_KEY_FILE": str(tmp_path / "k.pem")}
    server_tls = config.load(None, tls)
    assert (server_tls.authentication, server_tls.address) == ("none", "127.0.0.1")
    mtls = config.load(None, {**tls, "TLS_CLIENT_CA_FILE": str(tmp_path / "ca.pem")})
    assert (mtls.authentication, mtls.address) == ("mtls", "0.0.0.0")
    both = config.load(None, {**tls, "TLS_CLIENT_CA_FILE": str(tmp_path / "ca.pem"), "AUTH_TOKEN": "t0ken"})
    assert (both.authentication, both.address) == ("token+mtls", "0.0.0.0")


def test_env_wins_over_the_file_and_lists_split_on_commas(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
listen_port: "2804"
default_notifiers: [slack]
deduplication: {time_window_seconds: 10}
otel: {traces_enabled: true, collector_endpoint: "http://jaeger:4318"}
notifiers:
  webhook: {url: "http://file", custom_headers: {a: b}}
Unknown_Key: 1
""",
    )
    env = {
        "LISTEN_PORT": "9000",
        "DEFAULT_NOTIFIERS": "k8sevents, webhook",
        "DEDUPLICATION_TIME_WINDOW_SECONDS": "2",
        "NOTIFIERS_WEBHOOK_URL": "http://env",
        "KUBECONFIG": "/nonexistent/a:/nonexistent/b",
        "QUEUE_WORKERS": "3",
    }
    cfg = config.load(path, env, rules=["a.yaml", "b.yaml"])
    assert cfg.listen_port == 9000
    assert cfg.default_notifiers == ("k8sevents", "webhook")
    assert cfg.deduplication.time_window_seconds == 2
    assert cfg.notifiers["webhook"]["url"] == "http://env"
    assert cfg.notifiers["webhook"]["custom_headers"] == {"a": "b"}
    assert cfg.otel.traces_url() == "http://jaeger:4318/v1/traces"
    assert cfg.kubeconfig == "/nonexistent/a"
    assert cfg.queue.workers == 3
    assert cfg.rules_files == ("a.yaml", "b.yaml")
    assert cfg.unknown_keys == ("Unknown_Key",)


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ("listen_port: abc\n", {}, "listen_port"),
        ("", {"LISTEN_PORT": "70000"}, "listen_port"),
        ("queue: {capacity: 0}\n", {}, "queue.capacity"),
        ("watch_rules: maybe\n", {}, "watch_rules"),
        ("deduplication: 5\n", {}, "deduplication"),
        ("opa: {url: 'localhost:8181'}\n", {}, "opa.url"),
        ("tls: {cert_file: /nonexistent.pem, key_file: /nonexistent.key}\n", {}, "tls.cert_file"),
        ("log_format: xml\n", {}, "log_format"),
        ("intake: {processes: -1}\n", {}, "intake.processes"),
        ("intake: {processes: 65}\n", {}, "intake.processes"),
        ("intake: {processes: 1}\ntls: {cert_file: /x.pem, key_file: /x.key}\n", {}, "intake.processes"),
        ("- a\n", {}, "mapping"),
    ],
)
def test_a_bad_value_names_the_key_and_what_to_do(tmp_path: Path, text: str, env: dict[str, str], key: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.load(write(tmp_path, text), env)
    assert key in str(err.value)
    assert err.value.hint


def test_a_missing_config_file_is_an_error() -> None:
    with pytest.raises(config.ConfigError, match="cannot read config file"):
        config.load("/nonexistent/config.yaml", {})
