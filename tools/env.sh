# Sourced by tools/build and tools/path: the pins, the cache location and a Go environment that
# never leaves the cache (module cache and build cache included) and never fetches a toolchain.
case ${BASH_SOURCE[0]} in */*) _tools_dir=${BASH_SOURCE[0]%/*} ;; *) _tools_dir=. ;; esac
_tools_dir=$(cd "$_tools_dir" && pwd)  # (no dirname: tools/path runs at each engine start)
# shellcheck source=tools/versions.env
. "$_tools_dir/versions.env"

TALON_OPA_CACHE=${TALON_OPA_CACHE:-$HOME/.cache/talon-opa}
export TALON_OPA_CACHE
export GOMODCACHE="$TALON_OPA_CACHE/gomod"
export GOCACHE="$TALON_OPA_CACHE/gobuild"
export GOTOOLCHAIN=local
export GOFLAGS=-modcacherw
export CGO_ENABLED=0

ALL_COMPONENTS="opa etcd k8s kwok jaeger nats calico-crds cilium-crds helm promcrds fakegcs victorialogs opensearch"
# built only when asked: the minio:s3 test runs against moto without `tools/build minio`; wrk is for
# benchmarks only (`make bench-tools`)
OPTIONAL_COMPONENTS="minio wrk"
