#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager and kube-scheduler once from Debian's
# `kubernetes` source package and cache them. Idempotent: a cached build is reused.
#
# Why from source: this project's machines reach only Debian, PyPI and npm; no registry ships
# these binaries. Debian's 1.20.2 source, built in GOPATH mode, is what is known to work here.
#
# Output: $KPCAP_CACHE/kube/bin/{kube-apiserver,kube-controller-manager,kube-scheduler}
set -euo pipefail

CACHE="${KPCAP_CACHE:-$HOME/.cache/kpcap}"
OUT="$CACHE/kube/bin"
WANTED=(kube-apiserver kube-controller-manager kube-scheduler)

have_all() {
  for b in "${WANTED[@]}"; do [[ -x "$OUT/$b" ]] || return 1; done
}
log() { printf '[build-kube %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

if have_all; then
  log "cached binaries found in $OUT"
  exit 0
fi

# Build dependencies (root is required for apt; CI and developers run as root here).
"$(dirname "$0")/install-system-deps.sh"

if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  log "adding deb-src for bookworm main (apt-get source needs it)"
  cat > /etc/apt/sources.list.d/kpcap-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -qq
fi

WORK="$CACHE/kube/build"
mkdir -p "$WORK" "$OUT"
cd "$WORK"
SRCDIR=$(find "$WORK" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1 || true)
if [[ -z "$SRCDIR" ]]; then
  log "fetching Debian's kubernetes source package"
  apt-get source -qq kubernetes >/dev/null
  SRCDIR=$(find "$WORK" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
fi
log "source tree: $SRCDIR"

# The vendored reflect2 crashes the apiserver under Go 1.19+; Debian's packaged copy is fixed.
REFLECT2="$SRCDIR/vendor/github.com/modern-go/reflect2"
if [[ ! -e "$REFLECT2/.kpcap-replaced" ]]; then
  log "replacing vendored modern-go/reflect2 with Debian's copy"
  rm -rf "$REFLECT2"
  cp -a /usr/share/gocode/src/github.com/modern-go/reflect2 "$REFLECT2"
  rm -f "$REFLECT2/go.mod" "$REFLECT2/go.sum"
  touch "$REFLECT2/.kpcap-replaced"
fi

export GOPATH="$WORK/gopath"
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$SRCDIR" "$GOPATH/src/k8s.io/kubernetes"
export HOME="${HOME:-$WORK/home}"
export CGO_ENABLED=0 GO111MODULE=off GOFLAGS=-mod=vendor
export GOCACHE="$CACHE/kube/gocache"
cd "$GOPATH/src/k8s.io/kubernetes"
log "building ${WANTED[*]} (about 10 minutes on 2 cores the first time)"
start=$SECONDS
# Progress: the make output lists each step; a heartbeat shows it is alive during long links.
( while sleep 30; do log "still building... $((SECONDS - start))s"; done ) &
beat=$!
trap 'kill $beat 2>/dev/null || true' EXIT
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" 2>&1 | sed -u 's/^/  make: /' >&2
for b in "${WANTED[@]}"; do
  install -m 0755 "_output/bin/$b" "$OUT/$b"
done
log "built in $((SECONDS - start))s -> $OUT"
