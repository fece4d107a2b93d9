#!/usr/bin/env bash
# Installs what building and testing PoV needs on a fresh Debian machine; a no-op when
# everything is there. Safe to run repeatedly.
#
#   ci/install-deps.sh               everything: build, tests, guest, Ceph, fuzzing, CI
#   ci/install-deps.sh --build-only  only what building the binaries and running a stack
#                                    on local files needs (scripts/dev-stack, the demo)
set -euo pipefail
full=1
case "${1:-}" in
  "") ;;
  --build-only) full= ;;
  *) echo "usage: ci/install-deps.sh [--build-only]" >&2; exit 2 ;;
esac
need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
# scripts/dev-ca (the dev CA of the storage network's mutual TLS: demo, dev stack, tests).
command -v openssl >/dev/null || need_apt+=(openssl)
# Building: the proxy's `ceph` feature (on by default) binds the Ceph client libraries
# (vendor/ceph-sys: libcephfs, librados, librbd); bindgen, which generates the bindings
# at build time, loads libclang (libclang-dev).
for pkg in librados-dev librbd-dev libcephfs-dev libclang-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$pkg")
done
if [ -n "$full" ]; then
  # The guest test (scripts/guest-test): QEMU, a Debian kernel with its modules, a static
  # busybox, e2fsprogs (mke2fs/e2fsck copied into the initramfs), cpio, kmod (modinfo).
  command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
  ls /boot/vmlinuz-* >/dev/null 2>&1 || need_apt+=(linux-image-amd64)
  dpkg -s busybox-static >/dev/null 2>&1 || need_apt+=(busybox-static)
  [ -x /sbin/mke2fs ] && [ -x /sbin/e2fsck ] || need_apt+=(e2fsprogs)
  command -v cpio >/dev/null || need_apt+=(cpio)
  command -v modinfo >/dev/null || need_apt+=(kmod)
  command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
  # Fault tests with network namespaces and veth pairs (e2e/tests/failover.rs): ip.
  command -v ip >/dev/null || need_apt+=(iproute2)
  # Ceph: the daemons of the single-node dev cluster (scripts/ceph-dev) that tests, the
  # demo and benchmarks use.
  for pkg in ceph-mon ceph-osd ceph-mds ceph-common; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$pkg")
  done
  # The FUSE mount's tests (host-driver/src/tests.rs, e2e/tests/data_path.rs): real
  # programs on the mount (tar, sqlite3, git, rsync), fusermount, setpriv (another user).
  command -v fusermount >/dev/null || command -v fusermount3 >/dev/null || need_apt+=(fuse3)
  command -v sqlite3 >/dev/null || need_apt+=(sqlite3)
  command -v git >/dev/null || need_apt+=(git)
  command -v rsync >/dev/null || need_apt+=(rsync)
  command -v setpriv >/dev/null || need_apt+=(util-linux)
  # scripts/bindings-test: the C++ compiler (the header's C++ check) and Python's venv
  # (maturin and pytest come from PyPI into a venv of the test's own).
  command -v c++ >/dev/null || need_apt+=(g++)
  python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
  # scripts/prometheus-test: a real Prometheus server scraping both daemons.
  command -v prometheus >/dev/null || need_apt+=(prometheus)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  # Packages with a service (prometheus, ceph) must not start it on install: the tests
  # start their own, on loopback, and stop them. policy-rc.d's 101 = "action forbidden".
  policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod 755 /usr/sbin/policy-rc.d
    policy=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" || { [ -n "$policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d; exit 1; }
  [ -n "$policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
fi
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] || { echo "cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
fi
[ -n "$full" ] || exit 0
# .ci/run checks formatting and lints: rustfmt and clippy come with the toolchain.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
# scripts/fuzz (called by .ci/run): cargo-fuzz (crates.io), which builds the targets
# with the nightly toolchain (a nightly toolchain must be installed: rustup cannot fetch
# one on every machine, so this only tries).
if ! cargo fuzz --version >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
  cargo install --locked cargo-fuzz
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
  timeout 300 rustup toolchain install nightly --profile minimal || echo "install-deps: no nightly toolchain: scripts/fuzz will fail" >&2
fi

# SPDK's own JSON-RPC client (PyPI `spdk`) for scripts/spdk-rpc-test, in a venv under the
# cargo target directory.
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${CARGO_TARGET_DIR:-$root/target}/spdk-venv
if ! "$venv/bin/python" -c 'import spdk.rpc.client' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check spdk==26.9
fi
