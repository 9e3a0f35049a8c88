#!/usr/bin/env bash
# Make sure a Docker engine and Debian's docker-compose (1.29.2) are usable.
#
# Idempotent: when `docker info` already answers, nothing is installed or started.
# Otherwise installs Debian's docker.io + docker-compose (+ debootstrap for the
# stand-in base images) and starts dockerd in the background (no systemd in CI).
# Needs root for the install/start path.
set -euo pipefail

LOG_DIR="${TEXTCLF_CACHE_DIR:-${HOME}/.cache/textclf}"
DOCKERD_LOG="${LOG_DIR}/dockerd.log"
START_TIMEOUT_S="${DOCKERD_START_TIMEOUT_S:-60}"

log() { printf '[ensure-docker] %s\n' "$*" >&2; }

engine_up() { docker info >/dev/null 2>&1; }

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need_pkgs+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
# docker-compose needs a docker CLI only for `docker exec` in the tests; docker.io brings one.
command -v docker >/dev/null 2>&1 || need_pkgs+=(docker.io)

if ((${#need_pkgs[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        log "missing ${need_pkgs[*]} and not root: install them first"
        exit 1
    fi
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # With recommends (apparmor, ca-certificates, xz-utils): the set verified here.
    apt-get install -y -q "${need_pkgs[@]}" >/dev/null
fi

if engine_up; then
    log "engine already running: $(docker info --format '{{.ServerVersion}}' 2>/dev/null)"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    log "docker engine is not reachable and not root: start dockerd yourself"
    exit 1
fi

# A dockerd may be starting already (another run, or a stale socket): wait for it first.
if pgrep -x dockerd >/dev/null 2>&1; then
    log "dockerd process exists; waiting for it"
else
    # A pid file left by a dockerd that died would stop a new one from starting.
    rm -f /var/run/docker.pid
    mkdir -p "${LOG_DIR}"
    # containerd is started by dockerd itself when no system containerd runs.
    log "starting dockerd (log: ${DOCKERD_LOG})"
    nohup dockerd >"${DOCKERD_LOG}" 2>&1 </dev/null &
    disown || true
fi

for ((i = 0; i < START_TIMEOUT_S; i++)); do
    if engine_up; then
        log "engine up: $(docker info --format '{{.ServerVersion}} ({{.Driver}}, cgroup v{{.CgroupVersion}})' 2>/dev/null)"
        exit 0
    fi
    sleep 1
done

log "dockerd did not come up within ${START_TIMEOUT_S}s; last log lines:"
tail -n 30 "${DOCKERD_LOG}" >&2 || true
exit 1
