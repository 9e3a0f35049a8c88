#!/usr/bin/env bash
# The Compose stack for the reliability scenarios through Nginx, with the per-client limits
# raised (compose.override.yml). Built offline like `make e2e` (stand-in base images, a
# local wheelhouse: deploy/ci/), as its own Compose project on its own port.
#
#   bash deploy/reliability/stack.sh up     build and start; prints URL=... APP_PID=...
#   bash deploy/reliability/stack.sh down   remove the stack
#
# Then, e.g.: .venv/bin/python -m bench reliability overload --url "$URL" --pid "$APP_PID" --rate R
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${REPO_ROOT}"
CACHE="${TEXTCLF_CACHE_DIR:-${HOME}/.cache/textclf}"
PY="${REPO_ROOT}/${VENV:-.venv}/bin/python"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-textclf-reliability}"
export COMPOSE_FILE="docker-compose.yml:docker-compose.ci.yml:deploy/reliability/compose.override.yml"
export MODEL_DIR="${MODEL_DIR:-./model/default}"
export HTTP_BIND=127.0.0.1
export HTTP_PORT="${RELIABILITY_HTTP_PORT:-18480}"
export RELIABILITY_NGINX_CONF="${CACHE}/reliability-nginx.conf"
export WHEELHOUSE_PORT="${WHEELHOUSE_PORT:-38765}"
unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST

case "${1:-}" in
up)
    mkdir -p "${CACHE}"
    bash deploy/ci/ensure-docker.sh
    bash deploy/ci/base-images.sh
    wheelhouse="$(WHEELHOUSE_PYTHON="${PY}" bash deploy/ci/wheelhouse.sh)"
    "${PY}" -m http.server --bind 127.0.0.1 "${WHEELHOUSE_PORT}" --directory "${wheelhouse}" \
        >"${CACHE}/reliability-wheelhouse.log" 2>&1 &
    server_pid=$!
    trap 'kill "${server_pid}" 2>/dev/null; wait "${server_pid}" 2>/dev/null' EXIT
    "${PY}" -m bench reliability nginx-conf --out "${RELIABILITY_NGINX_CONF}" >/dev/null
    chmod a+r "${RELIABILITY_NGINX_CONF}"
    # Returns once the app is healthy and Nginx started (depends_on: service_healthy).
    timeout 1500 docker-compose up -d --build >"${CACHE}/reliability-compose-up.log" 2>&1 \
        || { tail -n 40 "${CACHE}/reliability-compose-up.log" >&2; exit 1; }
    app_pid="$(docker inspect -f '{{.State.Pid}}' "$(docker-compose ps -q app)")"
    echo "URL=http://127.0.0.1:${HTTP_PORT} APP_PID=${app_pid}"
    exit 0 # explicit: the EXIT trap's `wait` on the killed server would be the status
    ;;
down)
    timeout 120 docker-compose down --remove-orphans --timeout 25
    ;;
*)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
