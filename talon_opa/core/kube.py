"""A small async Kubernetes API client: kubeconfig or in-cluster credentials, JSON verbs, exec and logs.

Only what talon-opa needs, over one aiohttp session. API errors become KubeApiError with the API's
reason and message, never a bare HTTP status.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import ssl
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import yaml

from talon_opa.core.errors import TalonError

if TYPE_CHECKING:  # imported where used: the rules are validated and OPA spawned before aiohttp is imported
    import aiohttp

IN_CLUSTER_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeApiError(TalonError):
    """The API server refused or failed a request."""

    def __init__(self, method: str, path: str, status: int, reason: str, message: str) -> None:
        hint = {
            401: "the credentials were refused: check the kubeconfig or the service account token",
            403: "the service account lacks this permission: regenerate the ClusterRole with `talon-opa rbac`",
            404: "the object does not exist (any more)",
        }.get(status, "")
        # refused because the resource's CustomResourceDefinition is being deleted (403 or 405, no missing
        # permission): the API server still serves the resource for a moment, but creates nothing
        self.crd_terminating = "custom resource definition is terminating" in message
        if self.crd_terminating:
            hint = "the resource's CustomResourceDefinition is being deleted: wait until it is gone, or reinstall it"
        super().__init__(f"{method} {path}: {status} {reason}: {message}", hint=hint)
        self.status = status
        self.reason = reason
        self.api_message = message


@dataclass(frozen=True, slots=True)
class KubeConfig:
    server: str
    token: str | None = None
    ca_file: str | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    namespace: str = "default"
    cert_data: bytes | None = field(default=None, repr=False)  # client-certificate-data, decoded
    key_data: bytes | None = field(default=None, repr=False)  # client-key-data: kept in memory, never in a file

    @classmethod
    def from_file(cls, path: str | Path, context: str | None = None) -> KubeConfig:
        """Read a kubeconfig file (current context unless `context` is given)."""
        p = Path(path)
        try:
            doc = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise TalonError(f"cannot read kubeconfig {p}: {e}", hint="check the `kubeconfig` setting") from e
        name = context or doc.get("current-context")
        ctx = _named(doc.get("contexts"), name, "context", p)
        cluster = _named(doc.get("clusters"), ctx.get("cluster"), "cluster", p)
        user = _named(doc.get("users"), ctx.get("user"), "user", p) if ctx.get("user") else {}

        def rel(v: str | None) -> str | None:
            return str((p.parent / v).resolve()) if v else None

        cert_file, key_file = rel(user.get("client-certificate")), rel(user.get("client-key"))
        cert_data = key_data = None
        if user.get("client-certificate-data"):
            cert_data, cert_file = base64.b64decode(user["client-certificate-data"]), None
        if user.get("client-key-data"):
            key_data, key_file = base64.b64decode(user["client-key-data"]), None
        token = user.get("token")
        if not token and user.get("tokenFile"):
            token = Path(user["tokenFile"]).read_text().strip()
        return cls(
            server=str(cluster["server"]).rstrip("/"),
            token=token,
            ca_file=rel(cluster.get("certificate-authority")),
            ca_data=base64.b64decode(cluster["certificate-authority-data"])
            if cluster.get("certificate-authority-data")
            else None,
            insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
            cert_file=cert_file,
            key_file=key_file,
            namespace=ctx.get("namespace") or "default",
            cert_data=cert_data,
            key_data=key_data,
        )

    @classmethod
    def in_cluster(cls) -> KubeConfig:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise TalonError("not running in a cluster", hint="set `kubeconfig` to a kubeconfig file")
        ns_file = IN_CLUSTER_DIR / "namespace"
        return cls(
            server=f"https://{host}:{port}",
            token=(IN_CLUSTER_DIR / "token").read_text().strip(),
            ca_file=str(IN_CLUSTER_DIR / "ca.crt"),
            namespace=ns_file.read_text().strip() if ns_file.exists() else "default",
        )

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        ctx = ssl.create_default_context()
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_file:
            ctx.load_verify_locations(cafile=self.ca_file)
        elif self.ca_data:
            ctx.load_verify_locations(cadata=self.ca_data.decode())
        if self.cert_data is not None or self.key_data is not None:
            _load_cert_chain_from_memory(ctx, self.cert_data, self.cert_file, self.key_data, self.key_file)
        elif self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def _named(items: Any, name: Any, what: str, path: Path) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            return dict(item.get(what) or {})
    raise TalonError(f"kubeconfig {path} has no {what} named {name!r}", hint="check its current-context")


def _load_cert_chain_from_memory(
    ctx: ssl.SSLContext, cert: bytes | None, cert_file: str | None, key: bytes | None, key_file: str | None
) -> None:
    """`load_cert_chain` from bytes: OpenSSL reads them from an anonymous memory file (memfd, Linux), else
    from a private temporary file deleted as soon as they are loaded: key material never outlives the load."""
    with contextlib.ExitStack() as stack:

        def path_of(data: bytes | None, fallback: str | None) -> str | None:
            return fallback if data is None else stack.enter_context(_memory_file(data))

        certfile, keyfile = path_of(cert, cert_file), path_of(key, key_file)
        if certfile is None:
            raise TalonError("the kubeconfig has a client key but no client certificate", hint="add both")
        ctx.load_cert_chain(certfile, keyfile)


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("talon-opa-kube", 0)  # close-on-exec: no child inherits it
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="talon-opa-kube-") as d:  # 0700
        path = Path(d) / "data"
        path.write_bytes(data)
        path.chmod(0o600)
        yield str(path)


@dataclass(frozen=True, slots=True)
class ExecResult:
    stdout: str
    stderr: str
    exit_code: int


@dataclass(frozen=True, slots=True)
class ExecOutput:
    """What an exec produced, as bytes. `stdout` holds at most the limit asked for; `stderr` its tail.

    `exit_code` is None when we stopped reading because stdout went past the limit (the command was
    cut off by closing the stream, so it has no exit status of its own).
    """

    stdout: bytes
    stderr: bytes
    exit_code: int | None
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class LogOutput:
    """Log bytes, at most the limit asked for; `truncated` when the container had more."""

    data: bytes
    truncated: bool


STDERR_KEPT = 64 * 1024  # the tail of stderr an exec keeps (for the error message)


class KubeClient:
    """JSON verbs on API paths, exec and logs. Pass a session to share its pool; `close` closes our own."""

    def __init__(self, config: KubeConfig, session: aiohttp.ClientSession | None = None) -> None:
        import aiohttp

        self.config = config
        self._ssl = config.ssl_context()
        self._own = session is None
        self._session = session or aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl, limit=32))

    async def close(self) -> None:
        if self._own:
            await self._session.close()

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "talon-opa"}
        if self.config.token:
            h["Authorization"] = f"Bearer {self.config.token}"
        if content_type:
            h["Content-Type"] = content_type
        return h

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        timeout: float = 10.0,
    ) -> Any:
        import aiohttp

        data = None if body is None else json.dumps(body).encode()
        async with self._session.request(
            method,
            self.config.server + _checked(path),
            data=data,
            params=params,
            headers=self._headers(content_type if data is not None else None),
            ssl=self._ssl,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as r:
            text = await r.text()
            if r.status >= 400:
                raise _api_error(method, path, r.status, text)
            if not text:
                return None
            if r.content_type == "application/json":
                return json.loads(text)
            return text

    async def get(self, path: str, **kw: Any) -> Any:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any, **kw: Any) -> Any:
        return await self.request("POST", path, body=body, **kw)

    async def put(self, path: str, body: Any, **kw: Any) -> Any:
        return await self.request("PUT", path, body=body, **kw)

    async def patch(self, path: str, body: Any, *, patch_type: str = "merge", **kw: Any) -> Any:
        ct = {
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
            "strategic": "application/strategic-merge-patch+json",
        }[patch_type]
        return await self.request("PATCH", path, body=body, content_type=ct, **kw)

    async def delete(self, path: str, body: Any = None, **kw: Any) -> Any:
        return await self.request("DELETE", path, body=body, **kw)

    async def evict(self, namespace: str, pod: str, *, uid: str | None = None, timeout: float = 10.0) -> None:
        """Evict a pod through the Eviction API (policy/v1): PodDisruptionBudgets apply; 429 when one refuses.

        With `uid`, only that pod: a pod created anew under the same name gives 409.
        """
        body: dict[str, Any] = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": namespace},
        }
        if uid:
            body["deleteOptions"] = {"preconditions": {"uid": uid}}
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}/eviction"
        await self.post(path, body, timeout=timeout)

    async def logs(
        self, namespace: str, pod: str, *, container: str | None = None, tail_lines: int | None = None
    ) -> str:
        out = await self.log_bytes(namespace, pod, container=container, tail_lines=tail_lines, limit=None)
        return out.data.decode(errors="replace")

    async def log_bytes(
        self,
        namespace: str,
        pod: str,
        *,
        container: str | None = None,
        tail_lines: int | None = None,
        limit: int | None,
        timeout: float = 30.0,
    ) -> LogOutput:
        """A container's log (the log subresource), read as a stream and cut at `limit` bytes.

        The API server is asked for `limitBytes=limit+1` so it never sends much more than we keep; the
        extra byte tells a log of exactly `limit` bytes from a longer one.
        """
        import aiohttp

        params: dict[str, str] = {}
        if container:
            params["container"] = container
        if tail_lines is not None:
            params["tailLines"] = str(tail_lines)
        if limit is not None:
            params["limitBytes"] = str(limit + 1)
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}/log"
        buf = bytearray()
        truncated = False
        async with self._session.get(
            self.config.server + _checked(path),
            params=params,
            headers=self._headers(),
            ssl=self._ssl,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as r:
            if r.status >= 400:
                raise _api_error("GET", path, r.status, await r.text())
            async for chunk in r.content.iter_chunked(64 * 1024):
                buf += chunk
                if limit is not None and len(buf) > limit:
                    truncated = True
                    del buf[limit:]
                    break
        return LogOutput(bytes(buf), truncated)

    async def exec(
        self,
        namespace: str,
        pod: str,
        command: Sequence[str],
        *,
        container: str | None = None,
        stdin: bytes | None = None,
        timeout: float = 30.0,
    ) -> ExecResult:
        """Run a command in a container through the API server; the output as text."""
        out = await self.exec_bytes(namespace, pod, command, container=container, stdin=stdin, timeout=timeout)
        code = out.exit_code if out.exit_code is not None else -1
        return ExecResult(out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace"), code)

    async def exec_bytes(
        self,
        namespace: str,
        pod: str,
        command: Sequence[str],
        *,
        container: str | None = None,
        stdin: bytes | None = None,
        timeout: float = 30.0,
        max_stdout: int | None = None,
        stop_at_limit: bool = True,
    ) -> ExecOutput:
        """Run a command in a container through the API server (websocket, v5 or v4 channel protocol).

        stdout is kept up to `max_stdout` bytes and the result says `truncated` past it. Then, with
        `stop_at_limit`, the stream is closed (which ends the command, so there is no exit code);
        without, the rest is read and dropped until the command exits. `timeout` bounds each wait for
        data, not the whole run.
        """
        import aiohttp

        params: list[tuple[str, str]] = [("command", c) for c in command]
        params += [("stdout", "true"), ("stderr", "true")]
        if stdin is not None:
            params.append(("stdin", "true"))
        if container:
            params.append(("container", container))
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}/exec"
        out, err = bytearray(), bytearray()
        status: dict[str, Any] = {}
        truncated = False
        try:
            async with asyncio.timeout(timeout):  # the handshake; then `timeout` bounds each wait for data
                ws = await self._session.ws_connect(
                    self.config.server + _checked(path),
                    params=params,
                    headers=self._headers(),
                    protocols=("v5.channel.k8s.io", "v4.channel.k8s.io"),
                    ssl=self._ssl,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=timeout, ws_close=timeout),
                    max_msg_size=0,
                )
            async with ws:
                if stdin is not None:
                    for at in range(0, len(stdin), 32 * 1024):
                        await ws.send_bytes(b"\x00" + stdin[at : at + 32 * 1024])
                    if ws.protocol == "v5.channel.k8s.io":
                        await ws.send_bytes(b"\xff\x00")  # close stdin
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.BINARY or not msg.data:
                        continue
                    channel, payload = msg.data[0], msg.data[1:]
                    if channel == 1:
                        if not truncated:
                            out += payload
                        if max_stdout is not None and len(out) > max_stdout:
                            del out[max_stdout:]
                            truncated = True
                            if stop_at_limit:
                                break
                    elif channel == 2:
                        err += payload
                        if len(err) > STDERR_KEPT:
                            del err[: len(err) - STDERR_KEPT]
                    elif channel == 3 and payload:
                        status = json.loads(payload)
        except aiohttp.WSServerHandshakeError as e:
            raise KubeApiError("EXEC", path, e.status, "Upgrade refused", e.message) from e
        except TimeoutError as e:
            raise TalonError(
                f"exec in {namespace}/{pod} sent nothing for {timeout}s", hint="the command hangs or runs too long"
            ) from e
        if truncated and stop_at_limit:
            return ExecOutput(bytes(out), bytes(err), None, True)
        if not status:
            raise TalonError(
                f"exec in {namespace}/{pod} ended without an exit status",
                hint="the connection to the API server or the kubelet was cut",
            )
        return ExecOutput(bytes(out), bytes(err), _exit_code(status), truncated)


def _checked(path: str) -> str:
    """The path, refused when a segment is `.` or `..` (raw or percent-encoded).

    The HTTP client resolves such segments before the request leaves: a pod named `..` from an alert
    would turn `/api/v1/namespaces/x/pods/..` into the namespace itself, and a DELETE meant for the pod
    would delete the namespace. No Kubernetes object can have such a name.
    """
    if any(unquote(segment) in (".", "..") for segment in path.split("?", 1)[0].split("/")):
        raise TalonError(
            f"refused to request {path}: a name in it is '.' or '..'",
            hint="no Kubernetes object has such a name: check the alert's fields",
        )
    return path


def _exit_code(status: Mapping[str, Any]) -> int:
    if not status or status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", "1"))
    # kubelets that run commands locally (kwok) report a non-zero exit only in the message
    found = re.search(r"exit status (\d+)$", str(status.get("message", "")))
    if found:
        return int(found.group(1))
    raise TalonError(f"exec failed: {status.get('message', status)}", hint="")


def _api_error(method: str, path: str, status: int, text: str) -> KubeApiError:
    reason, message = "", text[:500]
    try:
        doc = json.loads(text)
        reason, message = str(doc.get("reason", "")), str(doc.get("message", message))
    except ValueError:
        pass
    return KubeApiError(method, path, status, reason, message)
