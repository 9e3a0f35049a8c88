#!/usr/bin/env bash
# Print the path of a promtool binary (`promtool check rules`, `promtool test rules`),
# starting no daemon: $PROMTOOL when set, else one on PATH, else promtool from Debian's
# `prometheus` package, downloaded once (apt-get download) and unpacked (dpkg-deb -x)
# under ${TEXTCLF_CACHE_DIR:-~/.cache/textclf}/tools. Progress goes to stderr.
set -euo pipefail

log() { printf '[promtool] %s\n' "$*" >&2; }

if [[ -n "${PROMTOOL:-}" ]]; then
    [[ -x "${PROMTOOL}" ]] || { log "PROMTOOL=${PROMTOOL} is not executable"; exit 1; }
    printf '%s\n' "${PROMTOOL}"
    exit 0
fi
if found="$(command -v promtool)"; then
    printf '%s\n' "${found}"
    exit 0
fi

CACHE="${TEXTCLF_CACHE_DIR:-${HOME}/.cache/textclf}"
TOOLS="${CACHE}/tools"
unpacked="${TOOLS}/prometheus-deb"
binary="${unpacked}/usr/bin/promtool"
if [[ -x "${binary}" ]]; then
    printf '%s\n' "${binary}"
    exit 0
fi

command -v apt-get >/dev/null || { log "no promtool and no apt-get: install Prometheus' promtool, or set PROMTOOL"; exit 1; }
mkdir -p "${TOOLS}"
work="$(mktemp -d "${TOOLS}/download.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
log "apt-get download prometheus (promtool only; nothing is installed or started)"
# An apt index that has never been fetched knows no prometheus package.
if ! (cd "${work}" && apt-get download prometheus >"${work}/apt.log" 2>&1); then
    log "apt index without prometheus: apt-get update"
    apt-get update -q >"${work}/apt.log" 2>&1 || { cat "${work}/apt.log" >&2; exit 1; }
    (cd "${work}" && apt-get download prometheus >"${work}/apt.log" 2>&1) \
        || { cat "${work}/apt.log" >&2; exit 1; }
fi
deb="$(find "${work}" -maxdepth 1 -name 'prometheus_*.deb' -print -quit)"
[[ -n "${deb}" ]] || { log "apt-get download left no prometheus_*.deb"; exit 1; }
dpkg-deb -x "${deb}" "${work}/root"
[[ -x "${work}/root/usr/bin/promtool" ]] || { log "${deb##*/} has no usr/bin/promtool"; exit 1; }
rm -rf "${unpacked}"
mv "${work}/root" "${unpacked}"
log "$("${binary}" --version 2>&1 | head -n 1)"
printf '%s\n' "${binary}"
