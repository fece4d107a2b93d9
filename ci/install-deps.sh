#!/usr/bin/env bash
# Installs what building and testing PoV needs on a fresh Debian machine; a no-op when
# everything is there. Safe to run repeatedly.
set -euo pipefail
need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
# Ceph: client libraries the proxy links (libcephfs) and the daemons of the
# single-node dev cluster (scripts/ceph-dev) that tests, the demo and benchmarks use.
for pkg in ceph-mon ceph-osd ceph-mds ceph-common librados-dev librbd-dev libcephfs-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] || { echo "cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
fi
