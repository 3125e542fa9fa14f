#!/usr/bin/env bash
# The test command (README): set up whatever is missing, lint, type-check, then run every test,
# the end-to-end ones included (they start and stop their own control plane, simulated nodes and
# storage servers). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/bootstrap.sh
export PATH="$PWD/.venv/bin:${KPCAP_CACHE:-$HOME/.cache/kpcap}/bin:$PATH"

echo "== ruff" >&2
ruff check .
ruff format --check .
echo "== mypy (strict on kpcap's packages)" >&2
mypy
echo "== import-linter (layers)" >&2
lint-imports
echo "== pytest" >&2
status=0
pytest "$@" || status=$?
if ((status == 5)); then
  echo "pytest collected no tests: that is a failure" >&2
  status=1
fi
echo "== leftovers of local clusters" >&2
if ! .venv/bin/kpcap-localcluster leftovers >/dev/null; then
  .venv/bin/kpcap-localcluster leftovers >&2 || true
  echo "a local cluster left namespaces, links or processes behind" >&2
  .venv/bin/kpcap-localcluster down >&2 || true
  status=1
fi
exit $status
