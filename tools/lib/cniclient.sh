#!/usr/bin/env bash
# Builds netctl-cniclient (tools/cniclient, a CNI runtime over libcni) from Debian's
# golang-github-appc-cni-dev source with Debian's Go, offline, into a cache directory.
# Idempotent: rebuilt only when the source is newer than the binary.
#
#   tools/lib/cniclient.sh            prints the binary's path
#   NETCTL_PEERS_DIR=DIR              cache root (default /var/cache/netctl-peers)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${NETCTL_PEERS_DIR:-/var/cache/netctl-peers}/bin"
out="$cache/netctl-cniclient"
src="$repo/tools/cniclient/main.go"
gopath=/usr/share/gocode
[ -d "$gopath/src/github.com/containernetworking/cni/libcni" ] || {
    echo "cniclient: libcni source missing; install golang-github-appc-cni-dev" >&2; exit 1; }
command -v go >/dev/null || { echo "cniclient: go missing; install golang-go" >&2; exit 1; }
if [ ! -x "$out" ] || [ "$src" -nt "$out" ]; then
    mkdir -p "$cache"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/src/netctl-cniclient"
    cp "$src" "$work/src/netctl-cniclient/main.go"
    (cd "$work/src/netctl-cniclient" &&
        GOPATH="$work:$gopath" GO111MODULE=off GOFLAGS= GOCACHE="$work/cache" CGO_ENABLED=0 \
        go build -o "$out.tmp" . >&2)
    mv "$out.tmp" "$out"
fi
echo "$out"
