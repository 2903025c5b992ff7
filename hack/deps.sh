#!/usr/bin/env bash
# Install what wharfd needs on a Debian 12 host: OS packages, a venv in .venv, the package itself.
#   hack/deps.sh          runtime dependencies
#   hack/deps.sh --dev    plus what the tests and checks need
# Idempotent; safe to re-run. Needs root (apt-get) and the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[ "${1:-}" = "--dev" ] && DEV=1

# runc runs containers; the CNI plugins wire pods; containerd brings the stock
# shim (an interop peer); docker-registry and busybox-static make test images.
PKGS=(runc containernetworking-plugins iproute2 iptables util-linux kmod)
[ "$DEV" = 1 ] && PKGS+=(docker-registry containerd busybox-static git)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's docker-registry package starts a service on :5000 where an init
  # system runs; tests start their own on 127.0.0.1 with a free port.
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
EXTRAS=""
[ "$DEV" = 1 ] && EXTRAS="[dev,e2e]"
echo "==> pip install -e .${EXTRAS}"
# Strict editable mode: a static path file that type checkers can follow.
.venv/bin/python -m pip install -q -e ".${EXTRAS}" --config-settings editable_mode=strict 2>&1 \
  | grep -v -E '^\s*$|!!|\*{10}|wheel_obj|SetuptoolsDeprecationWarning|^\s+(Please|See|By|Mode|This|Because|Note|More)' || true

# Debian puts the CNI plugins in /usr/lib/cni; the default bin_dir is /opt/cni/bin.
if [ -d /usr/lib/cni ] && [ -z "$(ls -A /opt/cni/bin 2>/dev/null)" ]; then
  mkdir -p /opt/cni/bin
  for plugin in /usr/lib/cni/*; do ln -sf "$plugin" /opt/cni/bin/; done
fi

# Console scripts on PATH, so the runtime manager finds our shim by name and
# users can type `wharf`.
for bin in wharfd wharf containerd-shim-wharf-v2; do
  ln -sf "$PWD/.venv/bin/$bin" "/usr/local/bin/$bin"
done
