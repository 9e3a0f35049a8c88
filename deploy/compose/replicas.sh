#!/usr/bin/env bash
# Replicas of the app behind Nginx, changed without a failed request.
#
#   deploy/compose/replicas.sh scale N   start or retire replicas until N run
#   deploy/compose/replicas.sh roll      replace every replica, one at a time (new image/settings)
#
# Run from the repository with the stack's own Compose settings (COMPOSE_FILE,
# COMPOSE_PROJECT_NAME, .env), e.g. `make scale N=3`. COMPOSE overrides the Compose command.
#
# The nginx container's main process (deploy/compose/nginx-upstream.sh) keeps Nginx on the
# replicas that answer /ready, so a new replica gets traffic once loaded; this script waits for
# that. A replica leaves in the opposite order: its address goes into the `leaving` file, Nginx
# stops sending to it, then it gets SIGTERM and drains what it still has (SIGTERM first would
# answer requests reaching it during its drain with 503 "draining").
set -euo pipefail

# The Compose plugin when the engine has it, else docker-compose (1.29+).
if [[ -z "${COMPOSE:-}" ]]; then
    if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; else COMPOSE=docker-compose; fi
fi
read -r -a COMPOSE <<<"${COMPOSE}"
HEALTH_TIMEOUT_S="${REPLICA_HEALTH_TIMEOUT_S:-300}"  # start_period is 180 s
PIN_DIR=/tmp/textclf-upstream

log() { printf '[replicas] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

nginx_id() {
    local id
    id="$("${COMPOSE[@]}" ps -q nginx)"
    [[ -n "${id}" ]] || die "no nginx container: start the stack first"
    printf '%s\n' "${id}"
}

# Running app containers, oldest replica number first.
running_replicas() {
    local ids
    ids="$("${COMPOSE[@]}" ps -q app)"
    [[ -n "${ids}" ]] || return 0
    # shellcheck disable=SC2086  # one id per word
    docker inspect -f '{{.State.Running}} {{index .Config.Labels "com.docker.compose.container-number"}} {{.Id}}' ${ids} \
        | awk '$1 == "true" { print $2, $3 }' | sort -n | awk '{ print $2 }'
}

wait_healthy() {
    local id="$1" status deadline=$((SECONDS + HEALTH_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        status="$(docker inspect -f '{{.State.Health.Status}}' "${id}")"
        [[ "${status}" == healthy ]] && return 0
        [[ "$(docker inspect -f '{{.State.Running}}' "${id}")" == true ]] || die "${id:0:12} exited while starting"
        sleep 1
    done
    die "${id:0:12} not healthy after ${HEALTH_TIMEOUT_S} s (docker logs ${id:0:12})"
}

address_of() {
    docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$1" | awk '{ print $1 }'
}

# What nginx-upstream.sh (the nginx container's main process) last applied, e.g.
# "serving 172.18.0.2 172.18.0.5": written once nginx reloaded and its old workers exited.
applied() {
    docker exec "$(nginx_id)" cat "${PIN_DIR}/applied" 2>/dev/null || true
}

# Wait until nginx serves through exactly these addresses (order aside).
wait_serving() {
    local want deadline=$((SECONDS + 60))
    want="$(tr ' ' '\n' <<<"$*" | sed '/^$/d' | sort | tr '\n' ' ')"
    while ((SECONDS < deadline)); do
        [[ "$(applied | sed -n 's/^serving //p' | tr ' ' '\n' | sed '/^$/d' | sort | tr '\n' ' ')" == "${want}" ]] \
            && { log "nginx serves through: ${want% }"; return 0; }
        sleep 0.5
    done
    die "nginx did not switch to ${want% } within 60 s (docker logs $(nginx_id | cut -c1-12))"
}

# The addresses of the running replicas, except the one with id $1 (if given).
addresses_except() {
    local id
    for id in $(running_replicas); do
        [[ "${id}" == "${1:-}" ]] || address_of "${id}"
    done
}

retire() {
    local id="$1" address rest
    address="$(address_of "${id}")"
    rest="$(addresses_except "${id}")"
    [[ -n "${rest}" ]] || die "no other replica would be left to serve: not retiring ${id:0:12}"
    log "retiring ${id:0:12} (${address})"
    # nginx-upstream.sh takes the address out of nginx first, then the replica drains.
    docker exec "$(nginx_id)" sh -c "echo ${address} >>${PIN_DIR}/leaving"
    wait_serving "${rest}"
    # SIGTERM, then up to the container's stop_grace_period for its drain.
    docker stop "${id}" >/dev/null
    docker rm "${id}" >/dev/null
    docker exec "$(nginx_id)" sh -c "grep -vxF ${address} ${PIN_DIR}/leaving >${PIN_DIR}/leaving.new; mv ${PIN_DIR}/leaving.new ${PIN_DIR}/leaving"
}

# One more replica with the service's current configuration; prints its id once healthy.
add_replica() {
    local before count id
    before="$(running_replicas)"
    count=$(($(wc -w <<<"${before}") + 1))
    "${COMPOSE[@]}" up -d --no-deps --no-recreate --scale "app=${count}" app >&2
    for id in $(running_replicas); do
        grep -qx "${id}" <<<"${before}" || { wait_healthy "${id}"; printf '%s\n' "${id}"; }
    done
}

scale() {
    local want="$1" have id
    [[ "${want}" =~ ^[1-9][0-9]*$ ]] || die "usage: $0 scale N (N >= 1)"
    have="$(running_replicas | wc -l)"
    if ((want >= have)); then
        "${COMPOSE[@]}" up -d --no-deps --no-recreate --scale "app=${want}" app >&2
        for id in $(running_replicas); do wait_healthy "${id}"; done
        wait_serving "$(addresses_except)"
    fi
    # The newest leave first.
    while (($(running_replicas | wc -l) > want)); do
        retire "$(running_replicas | tail -n 1)"
    done
    log "$(running_replicas | wc -l) replica(s) running"
}

roll() {
    local old id
    old="$(running_replicas)"
    [[ -n "${old}" ]] || die "no replica running"
    for id in ${old}; do
        log "new replica $(add_replica | cut -c1-12) for ${id:0:12}"
        wait_serving "$(addresses_except)"
        retire "${id}"
    done
    log "replaced $(wc -w <<<"${old}") replica(s)"
}

case "${1:-}" in
    scale) scale "${2:-}" ;;
    roll) roll ;;
    *) die "usage: $0 scale N | roll" ;;
esac
