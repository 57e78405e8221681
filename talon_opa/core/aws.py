"""AWS and S3-compatible clients (boto3), built from Talon's `aws.*` / `minio.*` keys.

Credentials follow Talon (`internal/aws/client/client.go`): static keys only when `aws.region`,
`aws.access_key` and `aws.secret_key` are all set, else boto3's default chain (environment, shared
files, web identity / IRSA, container and instance metadata); then, with `aws.role_arn`, an AssumeRole
(with `aws.external_id`) whose credentials refresh themselves before they expire; then one
`sts:GetCallerIdentity` before the first call, as Talon's Init does, so bad credentials fail the first
step with AWS's reason.

Endpoints: boto3's own `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` environment variables apply
(tests point them at a loopback moto server); MinIO's endpoint is `minio.endpoint` with `minio.use_ssl`,
path-style addressing.

boto3 blocks: every call runs in `asyncio.to_thread`, under a deadline, with botocore's own connect and
read timeouts below it so a thread never outlives its caller by long. Errors from AWS become `AwsError`
carrying the service's code, message and HTTP status.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.credentials
import botocore.exceptions
import botocore.session

from talon_opa.core import config, secrets
from talon_opa.core.errors import TalonError

T = TypeVar("T")
SESSION_NAME = "talon-opa"
MINIO_REGION = "us-east-1"  # MinIO's default region; the signature needs one


class AwsError(TalonError):
    """An AWS (or S3-compatible) API call failed: the server's code, message and HTTP status."""

    def __init__(self, message: str, *, hint: str = "", code: str = "", status: int = 0) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    read: float = 20.0
    total: float = 30.0  # the deadline of one call, retries included


def describe(e: BaseException, what: str) -> AwsError:
    """An AwsError for a botocore exception, naming the call and the server's reason."""
    if isinstance(e, botocore.exceptions.ClientError):
        err: Mapping[str, Any] = e.response.get("Error", {})
        meta: Mapping[str, Any] = e.response.get("ResponseMetadata", {})
        code = str(err.get("Code", "")) or "Unknown"
        status = int(meta.get("HTTPStatusCode", 0) or 0)
        message = str(err.get("Message", "")) or str(e)
        operation = str(getattr(e, "operation_name", "") or "")
        if operation and operation not in what:  # e.g. the AssumeRole behind the first call
            what = f"{what} ({operation})"
        return AwsError(
            f"{what}: {code}: {message} (HTTP {status})", hint=_hint(code, status), code=code, status=status
        )
    if isinstance(e, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return AwsError(
            f"{what}: no AWS credentials found",
            hint="set aws.region, aws.access_key and aws.secret_key, or give the pod an IAM role (IRSA)",
            code="NoCredentials",
        )
    if isinstance(e, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError):
        return AwsError(f"{what}: cannot reach the endpoint: {e}", hint="check the network path to AWS", code="Network")
    if isinstance(e, botocore.exceptions.ReadTimeoutError):
        return AwsError(f"{what}: the endpoint did not answer in time: {e}", hint="retry later", code="Timeout")
    if isinstance(e, botocore.exceptions.BotoCoreError):
        return AwsError(f"{what}: {e}", hint="check the aws configuration", code=type(e).__name__)
    return AwsError(f"{what}: {type(e).__name__}: {e}", code=type(e).__name__)


def _hint(code: str, status: int) -> str:
    if code in ("NoSuchBucket", "NoSuchKey"):
        return "create the bucket, or fix the output's bucket parameter"
    if code == "ResourceNotFoundException":
        return "create the function, or fix the action's function name and qualifier"
    if status == 403 or code in (
        "AccessDenied",
        "AccessDeniedException",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    ):
        return "grant the permission named in the action's docs to talon-opa's AWS identity, or fix the keys"
    if code in ("ExpiredToken", "ExpiredTokenException", "UnrecognizedClientException"):
        return "refresh the credentials (aws.* keys, or the pod's IAM role)"
    return "see AWS's message"


@dataclass(frozen=True, slots=True)
class Invocation:
    """What lambda:Invoke answered."""

    status: int
    function_error: str  # "Unhandled" / "Handled" when the function failed, else ""
    version: str
    payload: bytes


class _Blocking:
    """Runs one blocking boto3 call in a thread under a deadline, converting its errors."""

    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts

    def botocore_config(self, **extra: Any) -> botocore.config.Config:
        return botocore.config.Config(
            connect_timeout=self.timeouts.connect,
            read_timeout=self.timeouts.read,
            retries={"max_attempts": 2, "mode": "standard"},
            user_agent_extra="talon-opa",
            **extra,
        )

    async def run(self, what: str, fn: Callable[[], T]) -> T:
        try:
            async with asyncio.timeout(self.timeouts.total):
                return await asyncio.to_thread(fn)
        except TimeoutError as e:
            raise AwsError(
                f"{what}: no answer within {self.timeouts.total}s", hint="check the network path", code="Timeout"
            ) from e
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            raise describe(e, what) from e


def aws_session(cfg: config.Aws, timeouts: Timeouts = Timeouts()) -> boto3.Session:
    """A boto3 session with Talon's credential rules (static keys, else the chain; then AssumeRole)."""
    static = bool(cfg.region and cfg.access_key and cfg.secret_key)
    if static:
        base = boto3.Session(
            aws_access_key_id=cfg.access_key, aws_secret_access_key=cfg.secret_key, region_name=cfg.region
        )
    else:
        base = boto3.Session(region_name=cfg.region or _env_region())
    if not cfg.role_arn:
        return base
    sts = base.client("sts", config=_Blocking(timeouts).botocore_config())

    def refresh() -> dict[str, str]:
        kw: dict[str, Any] = {"RoleArn": cfg.role_arn, "RoleSessionName": SESSION_NAME}
        if cfg.external_id:
            kw["ExternalId"] = cfg.external_id
        creds = sts.assume_role(**kw)["Credentials"]
        secrets.KNOWN.add([creds["SecretAccessKey"], creds["SessionToken"]])
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": creds["Expiration"].isoformat(),
        }

    core = botocore.session.get_session()
    # botocore has no public setter for a session's credentials: this is the attribute its resolver fills
    core._credentials = botocore.credentials.RefreshableCredentials.create_from_metadata(
        metadata=refresh(), refresh_using=refresh, method="assume-role"
    )
    return boto3.Session(botocore_session=core, region_name=base.region_name)


class Aws:
    """AWS clients of one configuration: built on first use, identity checked once, calls off the loop."""

    def __init__(self, cfg: config.Aws, timeouts: Timeouts = Timeouts()) -> None:
        self.cfg = cfg
        self._blocking = _Blocking(timeouts)
        self._lock = threading.Lock()
        self._session: boto3.Session | None = None
        self._clients: dict[tuple[str, str], Any] = {}
        self._identity: Mapping[str, str] | None = None

    def chain_region(self) -> str:
        """The region of the default chain (AWS_REGION, shared config), "" if none (blocking: reads files)."""
        return _env_region() or boto3.Session().region_name or ""

    def _session_now(self) -> boto3.Session:
        with self._lock:
            if self._session is None:
                self._session = aws_session(self.cfg, self._blocking.timeouts)
            return self._session

    def client(self, service: str, region: str = "") -> Any:
        """The boto3 client of a service (blocking to build: call from a thread)."""
        key = (service, region)
        session = self._session_now()
        with self._lock:
            if key not in self._clients:
                extra: dict[str, Any] = {}
                if service == "s3":
                    extra["s3"] = {"addressing_style": "path"} if _path_style() else {}
                self._clients[key] = session.client(
                    service, region_name=region or None, config=self._blocking.botocore_config(**extra)
                )
            return self._clients[key]

    async def identity(self) -> Mapping[str, str]:
        """sts:GetCallerIdentity, once (Talon's Init check): who talon-opa is on AWS."""
        if self._identity is None:
            answer = await self._blocking.run("sts:GetCallerIdentity", lambda: self.client("sts").get_caller_identity())
            self._identity = {k: str(answer.get(k, "")) for k in ("Account", "Arn", "UserId")}
        return self._identity

    async def call(self, service: str, operation: str, *, region: str = "", **kwargs: Any) -> dict[str, Any]:
        """One API call, e.g. call("lambda", "invoke", FunctionName=...): its parsed answer."""
        await self.identity()
        what = f"{service}:{_api_name(operation)}"

        def do() -> dict[str, Any]:
            answer: dict[str, Any] = getattr(self.client(service, region), operation)(**kwargs)
            return answer

        return await self._blocking.run(what, do)

    async def invoke(self, name: str, *, qualifier: str, invocation_type: str, payload: bytes) -> Invocation:
        """lambda:Invoke: the status, the function error (if any) and the payload it returned."""
        await self.identity()

        def do() -> Invocation:
            answer = self.client("lambda").invoke(
                FunctionName=name, Qualifier=qualifier, InvocationType=invocation_type, Payload=payload
            )
            body = answer.get("Payload")
            data: bytes = body.read() if body is not None else b""
            return Invocation(
                status=int(answer.get("StatusCode", 0)),
                function_error=str(answer.get("FunctionError") or ""),
                version=str(answer.get("ExecutedVersion") or ""),
                payload=data,
            )

        return await self._blocking.run(f"lambda:Invoke {name}", do)

    def s3(self, region: str = "") -> S3:
        return S3(lambda: self.client("s3", region), self._blocking, before=self.identity)


def _env_region() -> str | None:
    # AWS_REGION is what the Go SDK (Talon) and EKS/IRSA use; boto3 alone reads only AWS_DEFAULT_REGION
    return os.environ.get("AWS_REGION") or None


def _path_style() -> bool:
    # a custom endpoint (moto, LocalStack, a gateway) rarely resolves bucket subdomains
    return bool(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))


def _api_name(operation: str) -> str:
    return "".join(part.capitalize() for part in operation.split("_"))


class S3:
    """The S3 calls the outputs make, on an AWS or a MinIO endpoint."""

    def __init__(
        self,
        client: Callable[[], Any],
        blocking: _Blocking,
        *,
        before: Callable[[], Any] | None = None,
        endpoint: str = "",
    ) -> None:
        self._client = client
        self._blocking = blocking
        self._before = before
        self.endpoint = endpoint

    async def _ready(self) -> None:
        if self._before is not None:
            await self._before()

    async def bucket_exists(self, bucket: str) -> bool:
        """HeadBucket: True, False on 404; AwsError for anything else (denied, unreachable)."""
        await self._ready()

        def head() -> bool:
            try:
                self._client().head_bucket(Bucket=bucket)
            except botocore.exceptions.ClientError as e:
                status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
                if status == 404 or e.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
                    return False
                raise
            return True

        return await self._blocking.run(f"s3:HeadBucket {bucket}", head)

    async def put(self, bucket: str, key: str, data: bytes, *, content_type: str = "") -> Mapping[str, str]:
        """PutObject: the object's ETag (and version id when versioned)."""
        await self._ready()
        kw: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": data}
        if content_type:
            kw["ContentType"] = content_type

        def put() -> Mapping[str, str]:
            answer = self._client().put_object(**kw)
            return {k: str(answer[k]) for k in ("ETag", "VersionId") if answer.get(k)}

        return await self._blocking.run(f"s3:PutObject {bucket}", put)


class Minio:
    """The MinIO server of `minio.*`: an S3 client with static keys and path-style addressing."""

    def __init__(self, cfg: config.Minio, timeouts: Timeouts = Timeouts()) -> None:
        self.cfg = cfg
        self.endpoint_url = f"{'https' if cfg.use_ssl else 'http'}://{cfg.endpoint}"
        self._blocking = _Blocking(timeouts)
        self._lock = threading.Lock()
        self._client: Any = None
        self.s3 = S3(self._get, self._blocking, endpoint=self.endpoint_url)

    def _get(self) -> Any:
        with self._lock:
            if self._client is None:
                session = boto3.Session(
                    aws_access_key_id=self.cfg.access_key,
                    aws_secret_access_key=self.cfg.secret_key,
                    region_name=MINIO_REGION,
                )
                self._client = session.client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    config=self._blocking.botocore_config(s3={"addressing_style": "path"}),
                )
            return self._client
