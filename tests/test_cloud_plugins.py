"""Pure pieces of the cloud plugins, as tables: Talon's object names and key rules, the payload the cloud
actionners send, error texts; and `rules check` on rules using every cloud plugin."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import botocore.exceptions
import pytest

from talon_opa.actionners import _payload
from talon_opa.actionners.aws.lambda_ import function_error_text
from talon_opa.core import config
from talon_opa.core.aws import Minio, describe
from talon_opa.core.errors import StepFailed
from talon_opa.core.events import decode_alert
from talon_opa.core.gcp import GcpError, error_reason, key_info
from talon_opa.outputs import _naming
from talon_opa.outputs.minio import minio_prefix
from talon_opa.outputs.s3 import s3_prefix
from talon_opa.plugins.runtime import Artifact

ROOT = Path(__file__).resolve().parents[1]
NOON = dt.datetime(2025, 2, 5, 10, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("name", "objects", "key"),
    [
        ("/etc/passwd", {"pod": "nginx", "namespace": "default", "file": "/etc/passwd"}, "default_nginx__etc_passwd"),
        ("tcpdump.pcap", {"hostname": "node-1"}, "node-1_tcpdump.pcap"),
        ("logs.txt", {"pod": "api-1"}, "api-1_logs.txt"),  # no namespace: the other objects, sorted
        ("x", {"zone": "b", "file": "/f", "app": "a"}, "a_b_x"),  # `file` left out
        ("x", {}, "x"),
        ("x", {"namespace": "../..", "pod": "a/b"}, ".._.._a_b_x"),  # our fix: no '/' from alert values
    ],
)
def test_object_key_is_talons_name(name: str, objects: dict[str, str], key: str) -> None:
    assert _naming.object_key(Artifact(name, b"1", objects), NOON) == f"2025-02-05T10-00-00Z_{key}"


def test_object_key_time_is_utc_whatever_the_zone_of_the_clock() -> None:
    paris = NOON.astimezone(dt.timezone(dt.timedelta(hours=1)))
    assert _naming.object_key(Artifact("x", b"1"), paris).startswith("2025-02-05T10-00-00Z_")


@pytest.mark.parametrize(
    ("prefix", "s3", "minio"),
    [
        ("", "", ""),
        ("logs", "logs", "logs"),
        ("logs/", "logs", "logs"),
        ("/logs/", "logs", "logs"),  # minio: Talon keeps the leading '/', MinIO drops it (see minio_prefix)
        ("//logs//", "/logs/", "/logs/"),  # one of each only, as Talon
        ("a/b/", "a/b", "a/b"),
    ],
)
def test_prefix_rules(prefix: str, s3: str, minio: str) -> None:
    assert s3_prefix(prefix) == s3
    assert minio_prefix(prefix) == minio


def test_join_key_drops_the_slash_of_an_empty_prefix() -> None:
    assert _naming.join_key("", "k") == "k"  # Talon: "/k"
    assert _naming.join_key("p", "k") == "p/k"


@pytest.mark.parametrize("bucket", ["ab", "a/b", "https://s3.example/b", "a b", "b?x", ""])
def test_a_bucket_that_is_no_name_fails_with_the_reason(bucket: str) -> None:
    with pytest.raises(StepFailed, match="is not a bucket name"):
        _naming.check_bucket(bucket)


@pytest.mark.parametrize("bucket", ["falco-artifacts", "my.bucket.eu", "legacy_Bucket_1"])
def test_bucket_names_pass(bucket: str) -> None:
    _naming.check_bucket(bucket)


def test_payload_is_talons_event_json_with_exact_numbers() -> None:
    body = json.dumps(
        {
            "output": "08:21:07.114583261: Notice A shell pid=1234567",
            "priority": "Notice",
            "rule": "Terminal shell in container",
            "hostname": "node-1",
            "output_fields": {"proc.pid": 1234567, "big": 18446744073709551616, "ratio": 1.5},
            "tags": ["shell"],
            "uuid": "ignored",
        }
    ).encode()
    alert = decode_alert(body)
    doc = json.loads(_payload.event_json(alert, "ab" * 16), object_pairs_hook=lambda p: p)
    keys = [k for k, _ in doc]
    assert keys == [
        "trace_id",
        "output",
        "priority",
        "rule",
        "hostname",
        "time",
        "source",
        "output_fields",
        "context",
        "tags",
    ]
    values = dict(doc)
    assert values["trace_id"] == "ab" * 16
    assert values["output"] == "A shell pid=1234567"  # prefix stripped, as Talon's event
    assert values["time"] == "0001-01-01T00:00:00Z"  # Go's zero time when the alert had none
    assert values["source"] == "syscall"
    assert dict(values["output_fields"]) == {"proc.pid": 1234567, "big": 18446744073709551616, "ratio": 1.5}
    assert values["tags"] == ["shell"]


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (b'{"errorMessage": "boom", "errorType": "ValueError"}', "ValueError: boom"),
        (b'{"errorMessage": "boom"}', "Unhandled: boom"),
        (b"not json", "not json"),
        (b"", "Unhandled"),
    ],
)
def test_function_error_text(payload: bytes, text: str) -> None:
    assert function_error_text("Unhandled", payload) == text


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (404, '{"error": {"code": 404, "message": "Not Found", "status": "NOT_FOUND"}}', "Not Found (HTTP 404)"),
        (403, '{"error": "denied"}', "denied (HTTP 403)"),
        (500, "upstream\n  exploded", "HTTP 500: upstream exploded"),
        (502, "", "HTTP 502"),
    ],
)
def test_google_error_reason(status: int, body: str, reason: str) -> None:
    assert error_reason(status, body) == reason


def test_credentials_path_is_a_file_or_the_json_itself(tmp_path: Path) -> None:
    info = {"type": "service_account", "project_id": "p"}
    path = tmp_path / "key.json"
    path.write_text(json.dumps(info))
    assert key_info(str(path)) == info
    assert key_info(json.dumps(info)) == info  # Talon hands the value to CredentialsFromJSON
    path.write_text("{not json")
    with pytest.raises(GcpError, match="not a JSON service-account key"):
        key_info(str(path))


def test_rules_using_every_cloud_plugin_check_without_a_cannot_run_warning(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    outputs = {"aws:s3": "{bucket: b1b, region: eu-west-1}", "minio:s3": "{bucket: b2b}", "gcp:gcs": "{bucket: b3b}"}
    actions = [
        f"    - action: Logs to {target}\n      actionner: kubernetes:log\n"
        f"      output: {{target: {target}, parameters: {params}}}\n"
        for target, params in outputs.items()
    ]
    actions.append("    - action: Lambda\n      actionner: aws:lambda\n      parameters: {aws_lambda_name: f}\n")
    actions.append(
        "    - action: Function\n      actionner: gcp:function\n"
        "      parameters: {gcp_function_name: f, gcp_function_location: europe-west1}\n"
    )
    rules.write_text("- rule: Cloud\n  match: {rules: [Terminal shell in container]}\n  actions:\n" + "".join(actions))
    done = subprocess.run(
        [sys.executable, "-m", "talon_opa.cli.main", "rules", "check", "-r", str(rules)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout + done.stderr
    for name in ("aws:s3", "minio:s3", "gcp:gcs", "aws:lambda", "gcp:function"):
        assert f"{name} cannot run" not in out
    assert out.splitlines()[-1] == "1 rule valid"


@pytest.mark.parametrize(
    ("operation", "code", "status", "what", "text"),
    [
        ("PutObject", "NoSuchBucket", 404, "s3:PutObject b", "s3:PutObject b: NoSuchBucket: m (HTTP 404)"),
        # the AssumeRole behind a first call is named, so a denied role is not read as a denied call
        ("AssumeRole", "AccessDenied", 403, "sts:GetCallerIdentity", "sts:GetCallerIdentity (AssumeRole): Access"),
        ("GetFunction", "ResourceNotFoundException", 404, "lambda:GetFunction", "lambda:GetFunction: Resource"),
    ],
)
def test_aws_errors_name_the_call_the_code_and_the_status(
    operation: str, code: str, status: int, what: str, text: str
) -> None:

    answer = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    error = describe(botocore.exceptions.ClientError(answer, operation), what)
    assert str(error).startswith(text)
    assert (error.code, error.status) == (code, status)
    assert error.hint


@pytest.mark.parametrize(("use_ssl", "url"), [(False, "http://minio.local:9000"), (True, "https://minio.local:9000")])
def test_minio_endpoint_and_use_ssl_make_the_url(use_ssl: bool, url: str) -> None:
    cfg = config.Minio(endpoint="minio.local:9000", access_key="a", secret_key="b", use_ssl=use_ssl)
    assert Minio(cfg).endpoint_url == url
