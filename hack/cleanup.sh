#!/usr/bin/env bash
# Remove what tests may leave behind when they are killed: processes (daemons,
# shims, zygotes, containers), mounts, network namespaces and cgroups of test
# roots. Every test object carries "wharfd-test-" in its path or name.
set -u
self=$$
kill_pids() {
  for pid in "$@"; do
    [ "$pid" != "$self" ] && kill -9 "$pid" 2>/dev/null
  done
  return 0
}
# Containers: whatever runs in a test cgroup.
for procs in /sys/fs/cgroup/*/wharfd-test-*/cgroup.procs /sys/fs/cgroup/*/*/wharfd-test-*/cgroup.procs \
             /sys/fs/cgroup/*/wharfd-test-*/*/cgroup.procs; do
  [ -f "$procs" ] && kill_pids $(cat "$procs" 2>/dev/null)
done
# Daemons, shims, zygotes and helpers started for tests, and layer workers of killed daemons.
kill_pids $(pgrep -f 'wharfd-test-' 2>/dev/null)
pkill -9 -f 'multiprocessing.forkserver import main.*wharfd' 2>/dev/null || true
sleep 0.2
# Mounts, deepest first.
for m in $(awk '{print $2}' /proc/self/mounts | grep -E '/wharfd-test-' | sort -r); do
  umount -l "$m" 2>/dev/null || true
done
if command -v ip >/dev/null; then
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^wharfd-test-'); do
    ip netns delete "$ns" 2>/dev/null || true
  done
fi
for cg in /sys/fs/cgroup/*/wharfd-test-* /sys/fs/cgroup/*/*/wharfd-test-*; do
  [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
done
# The layer workers' groups the test daemons made under their own cpu cgroups (runtime/cpu.py);
# each stays while anything runs in it.
find /sys/fs/cgroup/cpu* -mindepth 1 -depth -type d -name wharfd-bulk -exec rmdir {} \; 2>/dev/null || true
exit 0
