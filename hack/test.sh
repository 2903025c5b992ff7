#!/usr/bin/env bash
# Install what the tests need, then run every check and every test.
#   bash hack/test.sh [pytest args...]
# Runs as root (tests use runc, overlayfs, network namespaces). Leaves no
# mounts, netns, shims or cgroups behind, also when tests fail.
set -uo pipefail
cd "$(dirname "$0")/.."
bash hack/deps.sh --dev || exit 1

status=0
run() {
  echo "==> $*"
  "$@" || status=1
}
# Leftovers of an earlier, killed run would break pytest's temp dir; clear them first.
bash hack/cleanup.sh
trap 'bash hack/cleanup.sh' EXIT

run .venv/bin/ruff check .
run .venv/bin/mypy
run .venv/bin/python hack/protogen.py --check
echo "==> pytest"
.venv/bin/pytest -p no:cacheprovider --basetemp=/tmp/wharfd-test-pytest "$@"
rc=$?
# pytest exits 5 when no test was collected: that is a failure of the suite here.
[ "$rc" -ne 0 ] && status=1
exit $status
