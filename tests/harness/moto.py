"""A real moto server (PyPI `moto`, the AWS API emulator) on loopback, for S3, STS, IAM and Lambda.

Lambda runs in moto's Docker-less mode (`{"lambda": {"use_docker": false}}`, set before any function
exists): CreateFunction/GetFunction are moto's real implementations (a missing function is a real
ResourceNotFoundException), but Invoke does not run the function's code: it answers 200 with the request
payload echoed back (202 for Event, 204 for DryRun), or with the next answer queued through
`queue_lambda_answer`. moto's recorder keeps every request, so a test can read what the engine sent.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness.process import Component, free_port

REGION = "us-east-1"
ACCESS_KEY = "AKIATALONOPATEST0001"
SECRET_KEY = "talon-opa-moto-secret-key-0001"


@dataclass
class Moto:
    workdir: Path
    url: str = ""
    component: Component | None = field(default=None, init=False)

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {
            "MOTO_ENABLE_RECORDING": "True",
            "MOTO_RECORDER_FILEPATH": str(self.workdir / "moto-recording.jsonl"),
        }
        self.component = Component(
            "moto",
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            self.workdir / "moto.log",
            env=env,
        )
        self.component.start()
        await self.component.wait_ready(lambda: self._ok("/moto-api/data.json"))
        await self.api("POST", "/moto-api/config", {"lambda": {"use_docker": False}})
        await self.api("POST", "/moto-api/recorder/start-recording")

    def stop(self) -> None:
        if self.component:
            self.component.stop()

    async def _ok(self, path: str) -> bool:
        async with aiohttp.ClientSession() as s, s.get(self.url + path, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status == 200

    async def api(self, method: str, path: str, body: Any = None) -> str:
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, self.url + path, json=body, timeout=aiohttp.ClientTimeout(total=30)) as r,
        ):
            text = await r.text()
            assert r.status < 300, f"moto {method} {path}: {r.status} {text}"
            return text

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.url,
            "region_name": REGION,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
        }

    def client(self, service: str) -> Any:
        """A boto3 client on this server (for the test's own setup and checks; blocking, but local)."""
        import boto3

        return boto3.client(service, **self.client_kwargs())

    def create_function(self, name: str) -> str:
        """A Lambda function (with the role moto requires); its ARN."""
        iam = self.client("iam")
        try:
            role = iam.get_role(RoleName="talon-opa-test")["Role"]["Arn"]
        except iam.exceptions.NoSuchEntityException:
            role = iam.create_role(RoleName="talon-opa-test", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("handler.py", "def handler(event, context):\n    return event\n")
        answer = self.client("lambda").create_function(
            FunctionName=name,
            Runtime="python3.12",
            Role=role,
            Handler="handler.handler",
            Code={"ZipFile": buf.getvalue()},
        )
        return str(answer["FunctionArn"])

    async def queue_lambda_answer(self, *answers: str) -> None:
        """The next invokes answer these payloads, in order (moto's lambda-simple results queue)."""
        await self.api("POST", "/moto-api/static/lambda-simple/response", {"results": list(answers), "region": REGION})

    async def recorded(self) -> list[dict[str, Any]]:
        """Every request moto received since the start: method, url, headers and the decoded body."""
        text = await self.api("GET", "/moto-api/recorder/download-recording")
        out = []
        for line in text.splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            body = entry.get("body") or ""
            if entry.get("body_encoded"):
                body = base64.b64decode(body).decode(errors="replace")
            entry["body"] = body
            out.append(entry)
        return out

    async def invocations(self, function: str) -> list[dict[str, Any]]:
        """The Invoke requests that reached moto for this function."""
        marker = f"/2015-03-31/functions/{function}/invocations"
        return [e for e in await self.recorded() if e.get("method") == "POST" and marker in e.get("url", "")]
