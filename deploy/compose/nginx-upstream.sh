#!/usr/bin/env bash
# The nginx container's main process (docker-compose.yml `command`): runs nginx and keeps it
# sending requests only to app replicas that answer /ready.
#
# Nginx resolves `app` (Docker's DNS: every running replica) only when it reads nginx.conf, and
# nginx >= 1.27.3's `resolve` (which would follow DNS by itself) is not in every image we run.
# Without this loop a replica that its restart policy brings back at another address would
# never get traffic again, and a new replica would get traffic while still loading its model.
# Every POLL_S seconds (0.5: a restarted replica is seen before it listens again):
#   serving = the addresses of `app` whose /ready answers 200, minus the ones
#   deploy/compose/replicas.sh marked as leaving (LEAVING file, one address per line);
#   - any serving: an upstream of exactly those (PIN_DIR/*.conf + *.map, see nginx.conf), so
#     Nginx never sends to a replica that is loading, draining or leaving;
#   - none, and the pinned ones are still there (one replica restarting or overloaded past the
#     probe's timeout): the pin stays (no reload back and forth);
#   - none otherwise (all loading, or the script just started): no pin files, nginx.conf's
#     `textclf_app` resolves `app` itself; loading replicas answer 503 + Retry-After.
#   A change reloads nginx; once the old workers have finished their requests, APPLIED
#   holds the new state (replicas.sh waits on it).
# SIGQUIT/SIGTERM/SIGINT go to nginx (graceful stop); the container exits with nginx.
set -uo pipefail

APP_HOST="${TEXTCLF_UPSTREAM_HOST:-app}"
APP_PORT="${TEXTCLF_UPSTREAM_PORT:-8000}"
POLL_S="${TEXTCLF_UPSTREAM_POLL_S:-0.5}"
PIN_DIR=/tmp/textclf-upstream
LEAVING="${PIN_DIR}/leaving"
APPLIED="${PIN_DIR}/applied"
SERVER_OPTIONS="max_fails=1 fail_timeout=10s"

log() { printf '%s [upstream] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }

# Polled twice a second: few processes per round (getent and sort; a probe is timeout + bash).
resolved_addresses() {
    local address _
    getent ahostsv4 "${APP_HOST}" | while read -r address _; do printf '%s\n' "${address}"; done | sort -u
}

# /ready answers 200 within 2 s (bash's /dev/tcp: the image needs no HTTP client).
is_ready() {
    # shellcheck disable=SC2016  # expanded by the inner bash
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "GET /ready HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" "$1" >&3
        read -r _ code _ <&3
        [[ "${code}" == 200 ]]' _ "$1" "${APP_PORT}" 2>/dev/null
}

serving_addresses() {
    local address leaving=()
    [[ -f "${LEAVING}" ]] && mapfile -t leaving <"${LEAVING}"
    for address in "$@"; do
        [[ " ${leaving[*]} " == *" ${address} "* ]] && continue
        is_ready "${address}" && printf '%s\n' "${address}"
    done
    return 0
}

write_pin() {
    local address
    {
        printf 'upstream textclf_staying {\n'
        for address in "$@"; do printf '    server %s:%s %s;\n' "${address}" "${APP_PORT}" "${SERVER_OPTIONS}"; done
        printf '    keepalive 16;\n    keepalive_requests 1000;\n    keepalive_timeout 60s;\n}\n'
    } >"${PIN_DIR}/staying.conf.new"
    printf '~^ textclf_staying;\n' >"${PIN_DIR}/route.map.new"
    mv "${PIN_DIR}/staying.conf.new" "${PIN_DIR}/staying.conf"
    mv "${PIN_DIR}/route.map.new" "${PIN_DIR}/route.map"
}

worker_pids() {
    local file
    for file in /proc/[0-9]*/cmdline; do
        tr '\0' ' ' <"${file}" 2>/dev/null | grep -q '^nginx: worker' && basename "$(dirname "${file}")"
    done
    return 0
}

current_state=""  # what nginx was last configured with
draining_workers=""  # workers of the configuration before: requests still go where it said
unapplied=""  # the state to write to APPLIED once those workers have exited

pinned=()  # the addresses of the current pin, if any

update() {
    local resolved serving state pid address
    mapfile -t resolved < <(resolved_addresses)
    mapfile -t serving < <(serving_addresses "${resolved[@]}")
    # None ready (overloaded past the probe's 2 s, or restarting) but the pinned ones are all
    # still there: keep them rather than reload back and forth; they answer for themselves.
    if ((${#serving[@]} == 0 && ${#pinned[@]})); then
        serving=("${pinned[@]}")
        for address in "${pinned[@]}"; do
            [[ " ${resolved[*]} " == *" ${address} "* ]] || serving=()
        done
    fi
    state="serving ${serving[*]}"
    if [[ "${state}" != "${current_state}" ]]; then
        if ((${#serving[@]})); then
            write_pin "${serving[@]}"
        else
            rm -f "${PIN_DIR}/staying.conf" "${PIN_DIR}/route.map"
        fi
        pinned=("${serving[@]}")
        current_state="${state}"
        if [[ -n "${nginx_pid}" ]]; then
            # E.g. no replica at all (`app` resolves to nothing): nginx keeps its configuration
            # until the next change.
            if ! nginx -t -q 2>/dev/null; then
                log "resolved ${resolved[*]:-nothing}; nginx -t fails: configuration kept"
                return 0
            fi
            draining_workers="$(worker_pids)"
            nginx -s reload
        fi
        unapplied="${state}"
        log "resolved ${resolved[*]}; ${state}"
    fi
    [[ -n "${unapplied}" ]] || return 0
    for pid in ${draining_workers}; do
        [[ -e "/proc/${pid}" ]] && return 0
    done
    printf '%s\n' "${unapplied}" >"${APPLIED}.new" && mv "${APPLIED}.new" "${APPLIED}"
    unapplied=""
}

mkdir -p "${PIN_DIR}"
rm -f "${PIN_DIR}/staying.conf" "${PIN_DIR}/route.map" "${APPLIED}"
nginx_pid=""
update
nginx -g 'daemon off;' &
nginx_pid=$!
stopping=0
# shellcheck disable=SC2329  # invoked by the traps below
forward() {
    stopping=1
    kill -s "$1" "${nginx_pid}" 2>/dev/null
}
trap 'forward QUIT' QUIT
trap 'forward TERM' TERM
trap 'forward INT' INT

# Running and not yet a zombie (kill -0 succeeds on a zombie).
nginx_alive() {
    local line
    [[ -r "/proc/${nginx_pid}/status" ]] || return 1
    while read -r line; do
        [[ "${line}" == State:* ]] && { [[ "${line}" != *zombie* ]]; return; }
    done <"/proc/${nginx_pid}/status"
    return 1
}

while ((!stopping)) && nginx_alive; do
    # `wait` returns at once when a signal arrives; a bare sleep would delay the trap.
    sleep "${POLL_S}" &
    wait $! 2>/dev/null
    ((stopping)) || ! nginx_alive || update
done
# Until nginx has exited (another signal interrupts `wait` as well): its status is ours.
status=0
while [[ -e "/proc/${nginx_pid}" ]]; do
    wait "${nginx_pid}"
    status=$?
done
exit "${status}"
