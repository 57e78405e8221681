# syntax=docker/dockerfile:1
# The talon-opa image: the engine (`talon-opa`, ENTRYPOINT) and OPA (`opa`, for the engine's child OPA,
# its bundle checks, and the chart's OPA sidecar). Build: docker build -t talon-opa:0.1.0 .
#
# The steps are the pinned installs the project already runs: OPA `go install`ed at tools/versions.env's
# OPA_VERSION from the Go module proxy (as tools/build does), the package installed with
# `pip install -c constraints.txt .`. tests/test_container_image.py checks these pins against
# tools/versions.env, constraints.txt and pyproject.toml (no Docker engine runs in the tests).

# Go of the toolchain tools/ builds with (README: Go 1.26) and Python of pyproject.toml (3.11)
ARG GO_VERSION=1.26.8
ARG PYTHON_VERSION=3.11.7

FROM golang:${GO_VERSION}-bookworm AS opa
# keep equal to tools/versions.env
ARG OPA_VERSION=v1.21.4
ENV CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-modcacherw
RUN GOBIN=/out go install -trimpath -ldflags "-s -w" "github.com/open-policy-agent/opa@${OPA_VERSION}" \
    && /out/opa version

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY talon_opa ./talon_opa
RUN python -m venv /opt/talon-opa \
    && /opt/talon-opa/bin/pip install -c constraints.txt .
# what `talon-opa server` compiles at each start, kept beside the bytecode: the image, read-only and with
# PYTHONDONTWRITEBYTECODE, never writes it (talon_opa/core/compile_cache.py, docs/performance.md)
RUN /opt/talon-opa/bin/python -m talon_opa.cli.compile_table
COPY --from=opa /out/opa /usr/local/bin/opa
COPY examples/rules.yaml /tmp/check/rules.yaml
# the installed engine translates rules with the Rego library and checks the bundle with the real OPA
RUN TALON_OPA_OPA_BIN=/usr/local/bin/opa /opt/talon-opa/bin/talon-opa rules translate \
        -r /tmp/check/rules.yaml -o /tmp/check/bundle \
    && test -f /tmp/check/bundle/talon/plan/plan.rego \
    && rm -rf /tmp/check

FROM python:${PYTHON_VERSION}-slim-bookworm
COPY --from=build /opt/talon-opa /opt/talon-opa
COPY --from=opa /out/opa /usr/local/bin/opa
ENV PATH=/opt/talon-opa/bin:$PATH \
    TALON_OPA_OPA_BIN=/usr/local/bin/opa \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# non-root (the chart also sets runAsNonRoot, a read-only root filesystem and writable emptyDirs
# for /tmp and opa.bundle_dir)
USER 65532:65532
EXPOSE 2803
ENTRYPOINT ["talon-opa"]
CMD ["server", "-c", "/etc/talon-opa/config/config.yaml"]
