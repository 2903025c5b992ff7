#!/usr/bin/env bash
# Install everything and start wharfd on the default config, in the background.
#   bash hack/install.sh
# Logs: /var/log/wharfd.log. Stop: kill "$(cat /run/wharfd/wharfd.pid)".
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/deps.sh

SOCK=/run/wharfd/wharfd.sock
mkdir -p /run/wharfd
if [ -S "$SOCK" ] && wharf version >/dev/null 2>&1; then
  echo "wharfd is already running on $SOCK"
  exit 0
fi
echo "==> starting wharfd"
nohup /usr/local/bin/wharfd >>/var/log/wharfd.log 2>&1 &
echo $! > /run/wharfd/wharfd.pid
for _ in $(seq 1 100); do
  [ -S "$SOCK" ] && wharf version >/dev/null 2>&1 && break
  sleep 0.1
done
if ! wharf version; then
  echo "wharfd did not come up; see /var/log/wharfd.log" >&2
  tail -20 /var/log/wharfd.log >&2 || true
  exit 1
fi
echo
echo "wharfd is running (pid $(cat /run/wharfd/wharfd.pid)) on $SOCK"
