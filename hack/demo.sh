#!/usr/bin/env bash
# The main job (README): set up whatever is missing, then run a full capture end to end on a local
# cluster installed from the Helm chart. Pass --keep to keep the cluster for exploring with kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/bootstrap.sh
export PATH="$PWD/.venv/bin:${KPCAP_CACHE:-$HOME/.cache/kpcap}/bin:$PATH"
exec python -m kpcap_localcluster.demo "$@"
