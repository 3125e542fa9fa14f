#!/usr/bin/env bash
# Everything a fresh machine needs for kpcap's tests and demo: Debian packages, the Python venv
# (pinned by constraints.txt), and the control-plane binaries (built once, cached in ~/.cache/kpcap).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[bootstrap %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

hack/install-system-deps.sh

PY="${KPCAP_PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=".venv/.kpcap-installed"
# kpcap and its test harness (a distribution of its own, so kpcap's wheel and images leave it out).
want="$(sha256sum constraints.txt pyproject.toml localcluster/pyproject.toml | sha256sum | cut -c1-16)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  log "installing Python packages (pinned by constraints.txt)"
  mkdir -p .venv/logs
  if ! .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]' -e ./localcluster \
      > .venv/logs/pip-install.log 2>&1; then
    tail -40 .venv/logs/pip-install.log >&2
    exit 1
  fi
  .venv/bin/pip check >&2
  echo "$want" > "$stamp"
fi

bash hack/build-kube-binaries.sh
bash hack/install-tools.sh
log "ready"
