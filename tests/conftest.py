"""Fixtures that start the real components on loopback (see tests/harness/)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from talon_opa.opa.process import OpaProcess
from tests.harness import process
from tests.harness.gcp_functions import FunctionsServer
from tests.harness.gcs import FakeGcs
from tests.harness.jaeger import Jaeger
from tests.harness.kube import KubeCluster
from tests.harness.minio import MinioServer
from tests.harness.moto import Moto
from tests.harness.nats import Nats
from tests.harness.paths import REPO

OpaFactory = Callable[..., Awaitable[OpaProcess]]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def kube(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KubeCluster]:
    """etcd + kube-apiserver + controller-manager + scheduler + kwok (two nodes), shared by the session."""
    cluster = KubeCluster(tmp_path_factory.mktemp("kube"))
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def namespace(kube: KubeCluster) -> str:
    """A fresh namespace per test: tests share the cluster, never their objects."""
    return await kube.new_namespace()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def jaeger(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Jaeger]:
    j = Jaeger(tmp_path_factory.mktemp("jaeger"))
    try:
        await j.start()
        yield j
    finally:
        j.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nats(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Nats]:
    n = Nats(tmp_path_factory.mktemp("nats"))
    try:
        await n.start()
        yield n
    finally:
        n.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def moto(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Moto]:
    """A moto server (S3, STS, IAM, Lambda without Docker), shared by the session."""
    m = Moto(tmp_path_factory.mktemp("moto"))
    try:
        await m.start()
        yield m
    finally:
        m.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FakeGcs]:
    """fake-gcs-server (Cloud Storage JSON API, in memory), shared by the session."""
    g = FakeGcs(tmp_path_factory.mktemp("gcs"))
    try:
        await g.start()
        yield g
    finally:
        g.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def minio_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MinioServer]:
    """A real MinIO server, shared by the session; built on demand (`tools/build minio`, ~14 min cold)."""
    built = await asyncio.to_thread(subprocess.run, [str(REPO / "tools" / "path"), "minio"], capture_output=True)
    if built.returncode != 0:
        pytest.skip("MinIO is not built (opt-in, ~14 min cold): run tools/build minio")
    m = MinioServer(tmp_path_factory.mktemp("minio"))
    try:
        await m.start()
        yield m
    finally:
        m.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def gcp_functions() -> AsyncIterator[FunctionsServer]:
    """A Cloud Functions v2 + OAuth token test server (see its docstring), one per test."""
    server = FunctionsServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def opa(tmp_path: Path) -> AsyncIterator[OpaFactory]:
    """Start a real OPA server on a bundle (directory or .tar.gz): `server = await opa(path, **options)`."""
    started: list[OpaProcess] = []

    async def start(bundle: Path, **kw: Any) -> OpaProcess:
        server = OpaProcess(bundle=bundle, log_path=tmp_path / f"opa-{len(started)}.log", **kw)
        started.append(server)
        await server.start()
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing test gets the tail of every live component's log in its report."""
    report = yield
    if report.failed:
        for c in process.LIVE:
            report.sections.append((f"{c.name} log (tail)", c.log_tail(30)))
        tmp = getattr(item, "funcargs", {}).get("tmp_path")
        if "opa" in getattr(item, "funcargs", {}) and isinstance(tmp, Path):
            for log in sorted(tmp.glob("opa-*.log")):
                report.sections.append((f"{log.name} (tail)", "\n".join(log.read_text().splitlines()[-30:])))
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    process.stop_all()
