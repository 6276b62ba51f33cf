# Shared by testenv/up and testenv/down (sourced, not executed).
# shellcheck shell=bash

# shellcheck disable=SC2034  # used by the scripts that source this file
TESTENV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${PREVIEWD_TESTENV_CACHE:-$HOME/.cache/previewd-testenv}"
STATE="${PREVIEWD_TESTENV_STATE:-$CACHE/run}"
STATE="${STATE%/}"
if [[ -z "$STATE" || "$STATE" != /* ]]; then
  echo "testenv: PREVIEWD_TESTENV_STATE must be an absolute path other than / (got '$STATE')" >&2
  exit 1
fi
MARKER="$STATE/.previewd-testenv"

# Stop order (reverse start order, with kwok after the controllers that create pods).
STOP_ORDER=(kube-scheduler kube-controller-manager kwok kube-apiserver etcd)

log() { printf '%s: %s\n' "$LOG_PREFIX" "$*" >&2; }

lock_state() {
  mkdir -p "$(dirname "$STATE")"
  exec 8>"$STATE.flock"
  # fd 8 is closed in the components, so only a running up/down holds the lock.
  if ! flock -n 8; then
    log "waiting for another testenv up/down on $STATE"
    if ! flock -w "${PREVIEWD_TESTENV_LOCK_TIMEOUT:-900}" 8; then
      log "ERROR: $STATE.flock still held after ${PREVIEWD_TESTENV_LOCK_TIMEOUT:-900} s; holders: $(lock_holders)"
      exit 1
    fi
  fi
}

lock_holders() {
  local p out=""
  for p in /proc/[0-9]*; do
    if [[ "$(readlink "$p/fd/8" 2>/dev/null)" == "$STATE.flock" ]]; then
      out+=" ${p#/proc/}($(tr '\0' ' ' 2>/dev/null <"$p/cmdline" | cut -c1-60))"
    fi
  done
  echo "${out:- none found}"
}

# pid of a component if its pid file names a live process running that binary, else empty.
component_pid() {
  local name="$1" pid argv0
  [[ -f "$STATE/pids/$name.pid" ]] || return 0
  pid="$(<"$STATE/pids/$name.pid")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  [[ -r "/proc/$pid/cmdline" ]] || return 0
  argv0="$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | head -n1)" || return 0
  [[ "$(basename -- "$argv0")" == "$name" ]] || return 0
  echo "$pid"
}

stop_component() {
  local name="$1" pid i
  pid="$(component_pid "$name")"
  if [[ -n "$pid" ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      [[ -n "$(component_pid "$name")" ]] || break
      sleep 0.1
    done
    if [[ -n "$(component_pid "$name")" ]]; then
      log "$name (pid $pid) did not exit after SIGTERM within 10 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        [[ -n "$(component_pid "$name")" ]] || break
        sleep 0.1
      done
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$STATE/pids/$name.pid"
}

stop_all() {
  local c
  for c in "${STOP_ORDER[@]}"; do stop_component "$c"; done
}

# Remove everything the testenv created in $STATE except logs/ (kept for post-mortems until the
# next `up`). Refuses to touch a directory without our marker file.
remove_state() {
  [[ -d "$STATE" ]] || return 0
  if [[ ! -f "$MARKER" ]]; then
    log "not removing $STATE: it has no $(basename "$MARKER") marker (not created by testenv/up?)"
    return 0
  fi
  rm -rf "${STATE:?}/etcd-data" "$STATE/pki" "$STATE/pids" "$STATE/kwok-workdir" \
    "$STATE/kubeconfig" "$STATE/cluster.env" "$STATE/env" "${STATE:?}/bin" \
    "$STATE/audit.log" "$STATE/audit-policy.yaml" "$STATE/nodes.yaml" "$STATE/node.env"
}
