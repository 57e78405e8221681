"""A test server for Google's Cloud Functions v2 API and OAuth 2.0 token endpoint, on loopback.

No real Cloud Functions server can run here, so this one speaks the documented wire formats and
asserts on what arrives:
* the token endpoint of a service-account key (`token_uri`; Google's OAuth 2.0 JWT-bearer grant,
  RFC 7523): `POST /token` with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`.
  The assertion's RS256 signature is checked against the key the test generated, its `iss` must be the
  key's `client_email` and its `aud` Google's token endpoint (the documented audience, whatever
  `token_uri` the request was sent to). A `scope` claim gets an access token
  (`{"access_token", "expires_in", "token_type"}`), a `target_audience` claim an ID token
  (`{"id_token"}`, a JWT whose `aud` is that audience), as Google answers;
* `GET /v2/projects/{project}/locations/{location}/functions/{name}` (cloudfunctions.functions.get),
  which needs `Authorization: Bearer <an access token it issued>` and answers the function resource
  (`name`, `state`, `serviceConfig.uri`) or Google's error shape `{"error": {"code", "message", "status"}}`;
* the function's URI `POST /fn/{name}`, which needs `Authorization: Bearer <an ID token it issued for
  exactly that URI>` and `Content-Type: application/json`, records the JSON body and answers what the
  test scripted (status and body).
Anything else (a wrong token, audience or content type) is answered 401/400 and recorded in `problems`.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.harness.process import free_port

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Function:
    status: int = 200
    body: str = '{"ok": true}'


@dataclass
class FunctionsServer:
    project: str = "talon-opa-test"
    url: str = ""
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    client_email: str = "talon-opa@talon-opa-test.iam.gserviceaccount.com"
    functions: dict[tuple[str, str], Function] = field(default_factory=dict)  # (location, name) -> behaviour
    calls: list[dict[str, Any]] = field(default_factory=list)  # what reached each function
    gets: list[str] = field(default_factory=list)  # the function resources read
    issued: dict[str, str] = field(default_factory=dict)  # token -> "access" | "id:<audience>"
    problems: list[str] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_get("/v2/projects/{project}/locations/{location}/functions/{name}", self._get)
        app.router.add_post("/fn/{location}/{name}", self._call)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def key_json(self) -> dict[str, str]:
        """A service-account key file's content, as IAM hands it out, whose token_uri is this server."""
        pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return {
            "type": "service_account",
            "project_id": self.project,
            "private_key_id": "k1",
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": "1",
            "token_uri": f"{self.url}/token",
        }

    def write_key(self, path: Path) -> Path:
        path.write_text(json.dumps(self.key_json()))
        return path

    def uri(self, location: str, name: str) -> str:
        return f"{self.url}/fn/{location}/{name}"

    # JWTs

    def _sign(self, claims: dict[str, Any]) -> str:
        head = _b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "k1"}).encode())
        body = _b64(json.dumps(claims).encode())
        sig = self.key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{head}.{body}.{_b64(sig)}"

    def _verify(self, token: str) -> dict[str, Any]:
        head, body, sig = token.split(".")
        self.key.public_key().verify(_unb64(sig), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        claims: dict[str, Any] = json.loads(_unb64(body))
        return claims

    def _problem(self, status: int, text: str) -> web.Response:
        self.problems.append(text)
        return web.json_response(
            {"error": {"code": status, "message": text, "status": "UNAUTHENTICATED"}}, status=status
        )

    # handlers

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return self._problem(400, f"grant_type {form.get('grant_type')!r}")
        try:
            claims = self._verify(str(form.get("assertion", "")))
        except Exception as e:
            return self._problem(400, f"assertion not signed by the key: {type(e).__name__}")
        if claims.get("iss") != self.client_email or claims.get("aud") != GOOGLE_TOKEN_AUDIENCE:
            return self._problem(400, f"assertion iss/aud {claims.get('iss')!r} {claims.get('aud')!r}")
        now = int(time.time())
        if "target_audience" in claims:
            audience = str(claims["target_audience"])
            token = self._sign({"iss": "https://accounts.google.com", "aud": audience, "iat": now, "exp": now + 3600})
            self.issued[token] = f"id:{audience}"
            return web.json_response({"id_token": token})
        token = "ya29." + secrets.token_urlsafe(24)
        self.issued[token] = "access"
        return web.json_response({"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    def _bearer(self, request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""

    async def _get(self, request: web.Request) -> web.Response:
        if self.issued.get(self._bearer(request)) != "access":
            return self._problem(401, "functions.get without an access token this server issued")
        project, location, name = (request.match_info[k] for k in ("project", "location", "name"))
        resource = f"projects/{project}/locations/{location}/functions/{name}"
        self.gets.append(resource)
        if project != self.project or (location, name) not in self.functions:
            return web.json_response(
                {"error": {"code": 404, "message": f"Resource '{resource}' was not found", "status": "NOT_FOUND"}},
                status=404,
            )
        return web.json_response(
            {
                "name": resource,
                "state": "ACTIVE",
                "environment": "GEN_2",
                "serviceConfig": {"uri": self.uri(location, name), "service": f"projects/{project}/services/{name}"},
            }
        )

    async def _call(self, request: web.Request) -> web.Response:
        location, name = request.match_info["location"], request.match_info["name"]
        uri = self.uri(location, name)
        if self.issued.get(self._bearer(request)) != f"id:{uri}":
            return self._problem(401, f"call of {name} without an ID token for {uri}")
        if request.content_type != "application/json":
            return self._problem(400, f"content type {request.content_type}")
        body = await request.json()
        self.calls.append({"function": name, "location": location, "body": body})
        fn = self.functions[(location, name)]
        return web.Response(status=fn.status, text=fn.body, content_type="application/json")
