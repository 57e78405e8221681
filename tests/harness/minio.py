"""A real MinIO server on loopback (built by `tools/build minio` from the Go module proxy; on demand)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness import process
from tests.harness.process import Component, free_port

ROOT_USER = "talonopa-minio"
ROOT_PASSWORD = "talonopa-minio-secret"


@dataclass
class MinioServer:
    workdir: Path
    endpoint: str = ""  # host:port, as `minio.endpoint` takes it
    component: Component | None = field(default=None, init=False)

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        port, console = free_port(), free_port()
        self.endpoint = f"127.0.0.1:{port}"
        env = {"MINIO_ROOT_USER": ROOT_USER, "MINIO_ROOT_PASSWORD": ROOT_PASSWORD, "MINIO_UPDATE": "off"}
        args = ["server", str(self.workdir / "data"), "--address", self.endpoint]
        args += ["--console-address", f"127.0.0.1:{console}", "--quiet"]
        self.component = process.start("minio", "minio", args, self.workdir, env=env)
        await self.component.wait_ready(self._ok)

    def stop(self) -> None:
        if self.component:
            self.component.stop()

    async def _ok(self) -> bool:
        url = f"http://{self.endpoint}/minio/health/ready"
        async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status == 200

    def client(self) -> Any:
        """A boto3 S3 client on this server (test setup and checks)."""
        import boto3
        import botocore.config

        return boto3.client(
            "s3",
            endpoint_url=f"http://{self.endpoint}",
            region_name="us-east-1",
            aws_access_key_id=ROOT_USER,
            aws_secret_access_key=ROOT_PASSWORD,
            config=botocore.config.Config(s3={"addressing_style": "path"}),
        )
