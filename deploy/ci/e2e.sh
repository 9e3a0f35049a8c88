#!/usr/bin/env bash
# `make e2e`: the Compose stack, built and run on a real Docker engine the way
# users run it, then tested through Nginx on loopback (tests/e2e, marker e2e).
#
#   1. engine + docker-compose (deploy/ci/ensure-docker.sh)
#   2. base images: official ones if the engine has them, else Debian stand-ins
#   3. wheelhouse (cached outside the clone) served on 127.0.0.1 for pip
#   4. docker-compose -f docker-compose.yml -f docker-compose.ci.yml up -d --build
#   5. pytest: static checks, the running stack, Prometheus (profile monitoring),
#      replicas, faults, then `stop` under load
#   6. teardown, also on failure or interrupt (trap)
#
# Environment: E2E_MODEL_DIR (default ./model/default), E2E_HTTP_PORT (free
# port), E2E_PROMETHEUS_PORT (free port), E2E_KEEP=1 keeps the stack up afterwards,
# E2E_PYTHON (test runner; default $VENV/bin/python).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${REPO_ROOT}"
CACHE="${TEXTCLF_CACHE_DIR:-${HOME}/.cache/textclf}"
# The virtualenv of `make` (VENV, as .ci/run sets it) runs the tests and serves the wheels.
VENV="${VENV:-.venv}"
E2E_PYTHON="${E2E_PYTHON:-${VENV}/bin/python}"
[[ "${E2E_PYTHON}" == /* ]] || E2E_PYTHON="${REPO_ROOT}/${E2E_PYTHON}"
export E2E_PYTHON
if [[ ! -x "${E2E_PYTHON}" ]]; then
    printf '[e2e] no python at %s: run make venv-dev (or set VENV or E2E_PYTHON)\n' "${E2E_PYTHON}" >&2
    exit 1
fi
t0=$(date +%s)

log() { printf '[e2e %4ss] %s\n' "$(($(date +%s) - t0))" "$*" >&2; }

free_port() {
    "${E2E_PYTHON}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- settings ---
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-textclf-e2e}"
export COMPOSE_FILE="docker-compose.yml:docker-compose.ci.yml"
export MODEL_DIR="${E2E_MODEL_DIR:-./model/default}"
export HTTP_BIND=127.0.0.1
export HTTP_PORT="${E2E_HTTP_PORT:-$(free_port)}"
# The index URL is a build arg: a stable port keeps the pip layer cached across runs.
WHEELHOUSE_PORT="${WHEELHOUSE_PORT:-38765}"
if ! "${E2E_PYTHON}" -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' \
    "${WHEELHOUSE_PORT}" 2>/dev/null; then
    WHEELHOUSE_PORT="$(free_port)"
fi
export WHEELHOUSE_PORT
export E2E_BASE_URL="http://127.0.0.1:${HTTP_PORT}"
# Prometheus beside the stack; every docker-compose call below (tests too) includes it.
export COMPOSE_PROFILES=monitoring
export PROMETHEUS_PORT="${E2E_PROMETHEUS_PORT:-$(free_port)}"
export E2E_PROMETHEUS_URL="http://127.0.0.1:${PROMETHEUS_PORT}"
export E2E_REQUIRED=1
VCS_REF="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
export VCS_REF
# The CI machine's own pip settings name host paths; the build gets its own.
unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST

if [[ ! -f "${MODEL_DIR}/config.json" ]]; then
    log "no model at ${MODEL_DIR}: run \`make model\` first (make e2e does)"
    exit 1
fi
# The app runs as uid 10001: the model's files must be readable by others.
if unreadable="$(find "${MODEL_DIR}" \( -type f ! -perm -o=r \) -o \( -type d ! -perm -o=rx \) | head -n 3)" \
    && [[ -n "${unreadable}" ]]; then
    log "model files not world-readable (the container's uid 10001 cannot read them):"
    printf '%s\n' "${unreadable}" >&2
    log "fix: chmod -R a+rX ${MODEL_DIR}"
    exit 1
fi

# ---------------------------------------------------------------- teardown ---
server_pid=""
stack_started=0
cleanup() {
    local rc=$?
    set +e
    if ((stack_started)); then
        if ((rc != 0)); then
            log "failed (rc=${rc}): last logs"
            timeout 60 docker-compose ps >&2
            timeout 60 docker-compose logs --no-color --tail=60 >&2
        fi
        if [[ "${E2E_KEEP:-0}" == 1 ]]; then
            log "E2E_KEEP=1: stack left up at ${E2E_BASE_URL}, Prometheus at ${E2E_PROMETHEUS_URL} (docker-compose --profile monitoring down -v to remove)"
        else
            # -v: Prometheus' TSDB volume too, so the next run starts without old series.
            timeout 120 docker-compose down --remove-orphans --volumes --timeout 25 >/dev/null 2>&1
            log "stack removed"
        fi
    fi
    # No image pruning: the untagged builder-stage images are the layer cache
    # that makes the next run fast.
    if [[ -n "${server_pid}" ]]; then
        kill "${server_pid}" 2>/dev/null
        wait "${server_pid}" 2>/dev/null
    fi
    log "done in $(($(date +%s) - t0)) s (rc=${rc})"
    exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ----------------------------------------------------------------- prepare ---
if [[ -f .env ]]; then
    log "note: .env is present; the stack reads it (its values apply to this run)"
fi
bash deploy/ci/ensure-docker.sh
bash deploy/ci/base-images.sh
wheelhouse="$(WHEELHOUSE_PYTHON="${E2E_PYTHON}" bash deploy/ci/wheelhouse.sh)"

mkdir -p "${CACHE}"
"${E2E_PYTHON}" -m http.server --bind 127.0.0.1 "${WHEELHOUSE_PORT}" --directory "${wheelhouse}" \
    >"${CACHE}/wheelhouse-server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 50); do  # bounded: 10 s
    "${E2E_PYTHON}" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:${WHEELHOUSE_PORT}/simple/', timeout=1)" \
        2>/dev/null && break
    sleep 0.2
done
log "wheelhouse served on 127.0.0.1:${WHEELHOUSE_PORT}"

# ------------------------------------------------------------------- stack ---
# A leftover stack of an interrupted run would hold the names and the port.
timeout 120 docker-compose down --remove-orphans --volumes --timeout 5 >/dev/null 2>&1 || true
stack_started=1
build_t0=$(date +%s)
build_log="${CACHE}/e2e-compose-build.log"
log "docker-compose build (project ${COMPOSE_PROJECT_NAME}; log: ${build_log})"
if ! timeout 1500 docker-compose build >"${build_log}" 2>&1; then
    tail -n 80 "${build_log}" >&2
    log "docker-compose build failed (full output: ${build_log})"
    exit 1
fi
grep -E 'slim-venv|warm imports|^torch |Successfully tagged' "${build_log}" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
log "built in $(($(date +%s) - build_t0)) s"

up_t0=$(date +%s)
# For the test that Nginx started only after the app turned healthy (docker events).
export E2E_UP_SINCE="${up_t0}"
up_log="${CACHE}/e2e-compose-up.log"
log "docker-compose up -d --build (port ${HTTP_PORT})"
# Returns once the app is healthy and Nginx started (depends_on: service_healthy);
# bounded, since an app that keeps restarting would never turn healthy.
if ! timeout 420 docker-compose up -d --build >"${up_log}" 2>&1; then
    tail -n 40 "${up_log}" >&2
    log "docker-compose up failed (full output: ${up_log})"
    exit 1
fi
log "stack up (app healthy, Nginx started) in $(($(date +%s) - up_t0)) s"

image_size=$(docker image inspect -f '{{.Size}}' "${APP_IMAGE:-textclf:cpu}")
base_size=$(docker image inspect -f '{{.Size}}' "${PYTHON_IMAGE:-python:3.11-slim-bookworm}")
log "image ${APP_IMAGE:-textclf:cpu}: $((image_size / 1000000)) MB (base $((base_size / 1000000)) MB, added $(((image_size - base_size) / 1000000)) MB)"

# Nginx answers on loopback (bounded wait: Nginx starts right after the app is healthy).
for _ in $(seq 1 60); do
    "${E2E_PYTHON}" -c "import urllib.request as u; u.urlopen('${E2E_BASE_URL}/ready', timeout=2)" 2>/dev/null && break
    sleep 0.5
done

# ------------------------------------------------------------------- tests ---
# Order matters: test_replicas.py replaces the app container, test_faults.py restarts
# the app, test_shutdown.py stops the stack (last).
log "pytest -m e2e"
"${E2E_PYTHON}" -m pytest -m e2e -p no:cacheprovider --durations=6 -s \
    tests/e2e/test_static.py tests/e2e/test_stack.py tests/e2e/test_monitoring.py \
    tests/e2e/test_replicas.py tests/e2e/test_faults.py tests/e2e/test_shutdown.py
