# Shared helpers for scripts/demo, scripts/dev-stack and CI. Source it; it defines
# functions and variables only.
# shellcheck shell=bash

POV_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Binary directory: release by default, override with POV_PROFILE=debug.
pov_bin_dir() {
  local tgt=${CARGO_TARGET_DIR:-$POV_ROOT/target}
  echo "$tgt/${POV_PROFILE:-release}"
}

pov_build() {
  local flag=--release
  [ "${POV_PROFILE:-release}" = debug ] && flag=
  (cd "$POV_ROOT" && cargo build $flag --bins --workspace --quiet)
}

# Waits until FILE contains a line matching REGEX; prints the match. Fails after
# TIMEOUT seconds (default 30) or if PID dies.
pov_wait_line() {
  local file=$1 regex=$2 pid=$3 timeout=${4:-30} i
  for ((i = 0; i < timeout * 20; i++)); do
    if grep -Eo "$regex" "$file" 2>/dev/null | head -n1 | grep .; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "process $pid exited; its log:" >&2; cat "$file" >&2; return 1
    fi
    sleep 0.05
  done
  echo "timed out waiting for /$regex/ in $file" >&2; cat "$file" >&2; return 1
}

# pov_new_key_file FILE: writes a fresh random secret (32 hex digits, no newline) to
# the new file FILE, mode 0600. The secret only goes through pipes, never a command line.
pov_new_key_file() {
  rm -f "$1" && (umask 077 && head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$1")
}

# pov_add_tenant RPC_SOCK TENANT KEY_FILE [POV_RPC]: adds KEY_FILE (mode 0600) to
# pov-dpud's keyring as key TENANT-key and creates TENANT from it. Only the file's path
# is on a command line, never the secret. POV_RPC defaults to this build's pov-rpc.
pov_add_tenant() {
  local sock=$1 tenant=$2 file=$3 rpc=${4:-$(pov_bin_dir)/pov-rpc} path
  path=$(realpath "$file") || return 1
  "$rpc" -s "$sock" keyring_file_add_key "{\"name\":\"$tenant-key\",\"path\":\"$path\"}" >/dev/null || return 1
  "$rpc" -s "$sock" pov_tenant_create "{\"name\":\"$tenant\",\"key\":\"$tenant-key\"}" >/dev/null
}

# pov_tls_setup STATE_DIR DPU_NAME TENANT...
# The storage network's identities for a stack: a dev CA with the proxy's certificate
# and DPU_NAME's client certificate in STATE_DIR/tls (scripts/dev-ca), and an
# enrollment STATE_DIR/enrolled.json letting DPU_NAME act for TENANT... and every plain
# volume. Sets POV_PROXY_TLS_ARGS and POV_DPUD_TLS_ARGS (arrays of options).
pov_tls_setup() {
  local dir=$1 dpu=$2 t tenants=
  shift 2
  "$POV_ROOT/scripts/dev-ca" "$dir/tls" "$dpu" >/dev/null || return 1
  for t in "$@"; do tenants+="${tenants:+, }\"$t\""; done
  printf '{"dpus": {"%s": {"tenants": [%s], "volumes": ["*"]}}}\n' "$dpu" "$tenants" >"$dir/enrolled.json"
  POV_PROXY_TLS_ARGS=(--tls-cert "$dir/tls/proxy.pem" --tls-key "$dir/tls/proxy.key" --tls-ca "$dir/tls/ca.pem"
    --enrolled "$dir/enrolled.json")
  POV_DPUD_TLS_ARGS=(--tls-cert "$dir/tls/$dpu.pem" --tls-key "$dir/tls/$dpu.key" --tls-ca "$dir/tls/ca.pem")
}

# pov_start_stack STATE_DIR BACKEND_SPEC
# Starts pov-proxy and pov-dpud with state under STATE_DIR, creates tenant $POV_TENANT
# from the key file $POV_SECRET_FILE (through pov-dpud's keyring) and device pov0.
# Without POV_SECRET_FILE, the key file is STATE_DIR/$POV_TENANT.key (mode 0600),
# holding $POV_SECRET if set (written by a shell builtin, never on a command line), else
# a fresh random secret. The storage network is mutual TLS (pov_tls_setup: DPU "dpu-0"
# enrolled for $POV_TENANT and every volume) unless POV_TRANSPORT=tcp (plain TCP, trusts
# any peer: comparisons only). Sets and exports POV_SECRET_FILE (pov-host reads it),
# POV_PROXY_ADDR (HOST:PORT), POV_PROXY_ENDPOINT (tls:HOST:PORT or tcp:HOST:PORT),
# POV_RPC_SOCK, POV_DEVICE and writes pids to STATE_DIR/*.pid.
pov_start_stack() {
  local dir=$1 backend=$2 bin scheme=${POV_TRANSPORT:-tls}
  bin=$(pov_bin_dir)
  mkdir -p "$dir"
  POV_PROXY_TLS_ARGS=() POV_DPUD_TLS_ARGS=()
  case $scheme in
    tls) pov_tls_setup "$dir" dpu-0 "$POV_TENANT" || return 1 ;;
    tcp) ;;
    *) echo "POV_TRANSPORT must be tls or tcp, not '$scheme'" >&2; return 1 ;;
  esac
  "$bin/pov-proxy" --listen "$scheme:127.0.0.1:0" --backend "$backend" "${POV_PROXY_TLS_ARGS[@]}" >"$dir/proxy.log" 2>&1 &
  echo $! >"$dir/proxy.pid"
  local line
  line=$(pov_wait_line "$dir/proxy.log" 'listening on [0-9.:]+' "$(cat "$dir/proxy.pid")") || return 1
  POV_PROXY_ADDR=${line##* }
  POV_PROXY_ENDPOINT=$scheme:$POV_PROXY_ADDR
  POV_RPC_SOCK=$dir/rpc.sock
  "$bin/pov-dpud" --rpc-socket "$POV_RPC_SOCK" "${POV_DPUD_TLS_ARGS[@]}" >"$dir/dpud.log" 2>&1 &
  echo $! >"$dir/dpud.pid"
  pov_wait_line "$dir/dpud.log" 'ready' "$(cat "$dir/dpud.pid")" >/dev/null || return 1
  if [ -z "${POV_SECRET_FILE:-}" ]; then
    POV_SECRET_FILE=$dir/$POV_TENANT.key
    if [ -n "${POV_SECRET:-}" ]; then
      rm -f "$POV_SECRET_FILE" && (umask 077 && printf '%s' "$POV_SECRET" >"$POV_SECRET_FILE")
    else
      pov_new_key_file "$POV_SECRET_FILE"
    fi
  fi
  export POV_SECRET_FILE
  pov_add_tenant "$POV_RPC_SOCK" "$POV_TENANT" "$POV_SECRET_FILE" "$bin/pov-rpc" || return 1
  "$bin/pov-rpc" -s "$POV_RPC_SOCK" pov_device_create \
    "{\"name\":\"pov0\",\"socket\":\"$dir/pov0.sock\",\"proxies\":[\"$POV_PROXY_ENDPOINT\"]}" >/dev/null || return 1
  POV_DEVICE=vhost-user:$dir/pov0.sock
  export POV_PROXY_ADDR POV_PROXY_ENDPOINT POV_RPC_SOCK POV_DEVICE
}

# pov_stop_stack STATE_DIR: stops the daemons started by pov_start_stack.
pov_stop_stack() {
  local dir=$1 f pid i
  for f in dpud proxy; do
    [ -f "$dir/$f.pid" ] || continue
    pid=$(cat "$dir/$f.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/$f.pid"
  done
}

# CPU time (user+sys, in clock ticks) of PID.
pov_cpu_ticks() {
  awk '{print $14 + $15}' "/proc/$1/stat"
}
