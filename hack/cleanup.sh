#!/usr/bin/env bash
# Remove what tests may leave behind if they are killed: mounts and processes
# under test roots (named wharfd-test-*), test network namespaces and cgroups.
set -u
for m in $(awk '{print $2}' /proc/mounts | grep -E '/wharfd-test-' | sort -r); do
  umount -l "$m" 2>/dev/null || true
done
for pid in $(pgrep -f 'wharfd-test-' 2>/dev/null); do
  [ "$pid" != "$$" ] && kill -9 "$pid" 2>/dev/null || true
done
if command -v ip >/dev/null; then
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^wharfd-test-'); do
    ip netns delete "$ns" 2>/dev/null || true
  done
fi
for cg in /sys/fs/cgroup/*/wharfd-test-*; do
  [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
done
exit 0
