"""Google Cloud clients: credentials (google-auth), Cloud Storage uploads and Cloud Functions calls (aiohttp).

Credentials follow Talon (`internal/gcp/client/client.go`): `gcp.credentials_path` names a service-account
JSON key file; Talon hands that value to `CredentialsFromJSON` as if it were the JSON itself, so a value
that starts with `{` is taken as the key's content too. Empty: Application Default Credentials
(GOOGLE_APPLICATION_CREDENTIALS, workload identity, the metadata server). The project is the key's
`project_id` (else ADC's project). Tokens come from google-auth in a thread (its HTTP calls block), are
cached until they expire, and are registered as secrets so they never appear in a log line or a span.

The REST calls go through the engine's aiohttp session, each with a deadline:
* Cloud Storage JSON API: `POST {storage}/upload/storage/v1/b/{bucket}/o?uploadType=media&name=...`;
  `STORAGE_EMULATOR_HOST` (the variable every Cloud Storage client library honours) points it at an
  emulator, and then no token is sent unless credentials are configured;
* Cloud Functions v2: `GET {functions}/v2/projects/{p}/locations/{l}/functions/{name}`, then a POST to the
  function's `serviceConfig.uri` with an ID token whose audience is that URI (as Talon's idtoken client);
  `CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDFUNCTIONS` (gcloud's override) points the first call elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import google.oauth2.id_token
import google.oauth2.service_account

from talon_opa.core import config, secrets
from talon_opa.core.errors import TalonError

T = TypeVar("T")
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
STORAGE = "https://storage.googleapis.com"
FUNCTIONS = "https://cloudfunctions.googleapis.com"
BODY_LIMIT = 500  # characters of an error body kept in a message


class GcpError(TalonError):
    """A Google Cloud call failed: the server's status and message."""

    def __init__(self, message: str, *, hint: str = "", status: int = 0) -> None:
        super().__init__(message, hint=hint)
        self.status = status


def key_info(value: str) -> dict[str, Any]:
    """The service-account key of `gcp.credentials_path`: a file path, or the JSON itself (Talon's reading)."""
    text = value if value.lstrip().startswith("{") else Path(value).read_text()
    try:
        info = json.loads(text)
    except ValueError as e:
        raise GcpError(
            f"gcp.credentials_path is not a JSON service-account key: {e}",
            hint="give the path of the key file downloaded from IAM (or its JSON content)",
        ) from e
    if not isinstance(info, dict):
        raise GcpError("gcp.credentials_path is not a JSON object", hint="give a service-account key file")
    return info


def error_reason(status: int, body: str) -> str:
    """Google's error message from a JSON error body ({"error": {"message": ...}}), else the body's start."""
    try:
        doc = json.loads(body)
        message = doc["error"]["message"] if isinstance(doc.get("error"), dict) else doc.get("error")
        if message:
            return f"{message} (HTTP {status})"
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    text = " ".join(body.split())[:BODY_LIMIT]
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def _hint(status: int, what: str) -> str:
    if status == 404:
        return f"create the {what}, or fix its name and location in the rules"
    if status in (401, 403):
        return "grant the permission named in the docs to talon-opa's service account, or fix gcp.credentials_path"
    return "see Google's message"


class Gcp:
    """Google Cloud of one configuration: credentials on first use, REST calls on the engine's session."""

    def __init__(
        self,
        cfg: config.Gcp,
        http: aiohttp.ClientSession,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 20.0,
    ) -> None:
        env = os.environ if env is None else env
        self.cfg = cfg
        self.http = http
        self.timeout = timeout
        emulator = env.get("STORAGE_EMULATOR_HOST", "")
        if emulator and "://" not in emulator:
            emulator = "http://" + emulator
        self.emulated_storage = bool(emulator)
        self.storage_url = (emulator or STORAGE).rstrip("/")
        self.functions_url = (env.get("CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDFUNCTIONS") or FUNCTIONS).rstrip("/")
        self._lock = threading.Lock()
        self._info: dict[str, Any] | None = None
        self._creds: google.auth.credentials.Credentials | None = None
        self._project = ""
        self._id_creds: dict[str, google.auth.credentials.Credentials] = {}

    # credentials (blocking: called in a thread)

    def _load(self) -> google.auth.credentials.Credentials:
        with self._lock:
            if self._creds is None:
                if self.cfg.credentials_path:
                    info = key_info(self.cfg.credentials_path)
                    creds = google.oauth2.service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
                    self._info, self._project = info, str(info.get("project_id", ""))
                    self._creds = creds
                else:
                    creds, project = google.auth.default(scopes=SCOPES)
                    self._creds, self._project = creds, project or ""
            return self._creds

    def _access_token(self) -> str:
        creds = self._load()
        with self._lock:
            if not creds.valid:
                creds.refresh(google.auth.transport.requests.Request())
            token = str(creds.token)
        secrets.KNOWN.add([token])
        return token

    def _id_token(self, audience: str) -> str:
        self._load()
        with self._lock:
            creds = self._id_creds.get(audience)
            request = google.auth.transport.requests.Request()
            if creds is None:
                if self._info is not None:
                    creds = google.oauth2.service_account.IDTokenCredentials.from_service_account_info(
                        self._info, target_audience=audience
                    )
                else:
                    creds = google.oauth2.id_token.fetch_id_token_credentials(audience, request=request)
                self._id_creds[audience] = creds
            if not creds.valid:
                creds.refresh(request)
            token = str(creds.token)
        secrets.KNOWN.add([token])
        return token

    async def _blocking(self, what: str, fn: Callable[[], T]) -> T:
        """Run a blocking google-auth step in a thread, under the deadline, its errors made GcpError."""
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.to_thread(fn)
        except TimeoutError as e:
            raise GcpError(
                f"{what}: no credentials within {self.timeout}s", hint="check the path to Google's token endpoint"
            ) from e
        except google.auth.exceptions.DefaultCredentialsError as e:
            raise GcpError(
                f"{what}: no Google credentials: {e}",
                hint="set gcp.credentials_path, or run with workload identity / GOOGLE_APPLICATION_CREDENTIALS",
            ) from e
        except google.auth.exceptions.GoogleAuthError as e:
            raise GcpError(f"{what}: the token was refused: {e}", hint="check the service-account key") from e
        except (OSError, ValueError) as e:  # an unreadable file, a key google-auth cannot parse
            raise GcpError(f"{what}: bad gcp.credentials_path: {e}", hint="fix gcp.credentials_path") from e

    async def _blocking_token(self, what: str, audience: str = "") -> str:
        if audience:
            return await self._blocking(what, lambda: self._id_token(audience))
        return await self._blocking(what, self._access_token)

    async def project(self) -> str:
        """The project of the credentials (Talon: it must be in them)."""
        await self._blocking("load the Google credentials", self._load)
        if not self._project:
            raise GcpError(
                "the Google credentials name no project",
                hint="use a service-account key (it carries project_id) or set GOOGLE_CLOUD_PROJECT",
            )
        return self._project

    async def _auth_headers(self, what: str) -> dict[str, str]:
        if self.emulated_storage and not self.cfg.credentials_path:
            return {}
        return {"Authorization": f"Bearer {await self._blocking_token(what)}"}

    # Cloud Storage

    async def upload(self, bucket: str, name: str, data: bytes, content_type: str) -> dict[str, Any]:
        """Create the object `name` in `bucket` (JSON API, simple upload): the object resource Google returns."""
        what = f"storage.objects.insert {bucket}"
        headers = {**await self._auth_headers(what), "Content-Type": content_type}
        url = f"{self.storage_url}/upload/storage/v1/b/{quote(bucket, safe='')}/o"
        answer = await self._request(
            what, "POST", url, headers=headers, data=data, params={"uploadType": "media", "name": name}, thing="bucket"
        )
        return answer

    # Cloud Functions

    async def function(self, location: str, name: str) -> dict[str, Any]:
        """The v2 function resource (Talon's check and first call): GetFunction."""
        what = f"cloudfunctions.functions.get {name}"
        project = await self.project()
        headers = {"Authorization": f"Bearer {await self._blocking_token(what)}"}
        path = (
            f"projects/{quote(project, safe='')}/locations/{quote(location, safe='')}/functions/{quote(name, safe='')}"
        )
        return await self._request(what, "GET", f"{self.functions_url}/v2/{path}", headers=headers, thing="function")

    async def call_function(self, uri: str, payload: bytes, *, timeout: float) -> tuple[int, str]:
        """POST the payload to the function's URI with an ID token for it: (status, body); GcpError if not 200."""
        what = f"call function {uri}"
        token = await self._blocking_token(what, audience=uri)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        try:
            async with (
                asyncio.timeout(timeout),
                self.http.post(uri, data=payload, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as r,
            ):
                body = await r.text(errors="replace")
        except TimeoutError as e:
            raise GcpError(f"{what}: no answer within {timeout}s", hint="raise gcp_function_timeout") from e
        except aiohttp.ClientError as e:
            raise GcpError(f"{what}: {type(e).__name__}: {e}", hint="check the network path to the function") from e
        if r.status != 200:
            raise GcpError(
                f"{what}: the function answered {error_reason(r.status, body)}",
                hint="see the function's logs" if r.status >= 500 else _hint(r.status, "function"),
                status=r.status,
            )
        return r.status, body

    async def _request(
        self,
        what: str,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        thing: str,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        try:
            async with (
                asyncio.timeout(self.timeout),
                self.http.request(
                    method,
                    url,
                    headers=dict(headers),
                    data=data,
                    params=params,
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as r,
            ):
                body = await r.text(errors="replace")
        except TimeoutError as e:
            raise GcpError(f"{what}: no answer within {self.timeout}s", hint="check the network path") from e
        except aiohttp.ClientError as e:
            raise GcpError(f"{what}: {type(e).__name__}: {e}", hint="check the network path to Google") from e
        if r.status >= 300:
            raise GcpError(f"{what}: {error_reason(r.status, body)}", hint=_hint(r.status, thing), status=r.status)
        try:
            doc = json.loads(body) if body else {}
        except ValueError as e:
            raise GcpError(f"{what}: the answer is not JSON: {body[:BODY_LIMIT]}") from e
        if not isinstance(doc, dict):
            raise GcpError(f"{what}: the answer is not a JSON object")
        return doc
