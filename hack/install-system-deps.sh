#!/usr/bin/env bash
# Debian packages the harness, the tests and the build need. Idempotent and quiet when satisfied.
set -euo pipefail
PKGS=(golang-go dpkg-dev rsync jq etcd-server golang-github-modern-go-reflect2-dev
      iproute2 tcpdump tshark netsniff-ng procps psmisc curl
      prometheus)  # for promtool only (`promtool check metrics` in the metrics tests)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[deps] installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Installed for promtool: where systemd started the Prometheus server with it, stop it again.
  if [[ " ${missing[*]} " == *" prometheus "* && -d /run/systemd/system ]]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
fi
