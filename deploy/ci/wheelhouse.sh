#!/usr/bin/env bash
# Build (or reuse) a local PEP 503 "simple" index of every wheel the image needs.
#
# pip inside `docker build` cannot reach PyPI in CI, so the host downloads the
# wheels once into a cache OUTSIDE the clone and the build reads them from
# http://127.0.0.1:PORT/simple (see serve-wheelhouse.sh and docker-compose.ci.yml).
# torch comes from a local wheel directory (TORCH_WHEEL_DIR, default /opt/wheels)
# when it holds the pinned version, otherwise from the CPU index.
#
# Layout: $WHEELHOUSE/simple/<normalised-name>/<file>.whl — python's http.server
# directory listing of each folder is a valid PEP 503 project page.
# Prints the wheelhouse path on stdout.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${TEXTCLF_CACHE_DIR:-${HOME}/.cache/textclf}"
WHEELHOUSE="${WHEELHOUSE:-${CACHE}/wheelhouse}"
TORCH_WHEEL_DIR="${TORCH_WHEEL_DIR:-/opt/wheels}"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
# Any python with pip works: WHEELHOUSE_PYTHON (e2e.sh passes the venv's), else
# $VENV or .venv of the clone, else python3.
venv_python="${VENV:-${REPO_ROOT}/.venv}/bin/python"
[[ "${venv_python}" == /* ]] || venv_python="${REPO_ROOT}/${venv_python}"
PYTHON="${WHEELHOUSE_PYTHON:-$([[ -x "${venv_python}" ]] && echo "${venv_python}" || echo python3)}"
REQS="${REPO_ROOT}/requirements.txt"

log() { printf '[wheelhouse] %s\n' "$*" >&2; }

torch_version="$(sed -nE 's/^torch==([^ ;#]+).*/\1/p' "${REQS}")"
[[ -n "${torch_version}" ]] || { log "no torch==X pin in ${REQS}"; exit 1; }
torch_wheel="$(find "${TORCH_WHEEL_DIR}" -maxdepth 1 -name "torch-${torch_version}[+-]*-cp311-*.whl" 2>/dev/null | sort | head -n1 || true)"

# The cache key: the requirements file, the torch wheel and this script.
key="$(cat "${REQS}" "${BASH_SOURCE[0]}" <(echo "${torch_wheel##*/}") | sha256sum | cut -c1-16)"
stamp="${WHEELHOUSE}/.stamp"
if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${key}" ]]; then
    log "up to date (${key}): ${WHEELHOUSE}"
    echo "${WHEELHOUSE}"
    exit 0
fi

tmp="$(mktemp -d "${CACHE}/wheelhouse.tmp.XXXXXX" 2>/dev/null || { mkdir -p "${CACHE}" && mktemp -d "${CACHE}/wheelhouse.tmp.XXXXXX"; })"
trap 'rm -rf "${tmp}"' EXIT
mkdir -p "${tmp}/dl"

# Everything but torch, pinned; torch from the local wheel (deterministic: no
# CUDA wheel from PyPI can win the resolution) or from the CPU index.
grep -vE '^torch==' "${REQS}" >"${tmp}/reqs-no-torch.txt"
pip_args=(download --quiet --disable-pip-version-check --only-binary=:all:
    --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64
    --platform manylinux_2_17_x86_64 --platform linux_x86_64 --implementation cp
    -d "${tmp}/dl" -r "${tmp}/reqs-no-torch.txt")
if [[ -n "${torch_wheel}" ]]; then
    log "torch from ${torch_wheel}"
    pip_args+=("${torch_wheel}")
else
    log "torch ${torch_version}+cpu from ${TORCH_CPU_INDEX}"
    pip_args+=(--extra-index-url "${TORCH_CPU_INDEX}" "torch==${torch_version}+cpu")
fi
log "downloading wheels (first run only; cached in ${WHEELHOUSE})"
# (the filter drops pip's noise about index folders of the host's pip config)
"${PYTHON}" -m pip "${pip_args[@]}" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

# PEP 503 layout: one folder per normalised project name.
mkdir -p "${tmp}/simple"
for whl in "${tmp}"/dl/*.whl; do
    base="${whl##*/}"
    name="$(printf '%s' "${base%%-*}" | tr '[:upper:]' '[:lower:]' | sed -E 's/[-_.]+/-/g')"
    mkdir -p "${tmp}/simple/${name}"
    mv "${whl}" "${tmp}/simple/${name}/"
done

rm -rf "${WHEELHOUSE}.old"
[[ -d "${WHEELHOUSE}" ]] && mv "${WHEELHOUSE}" "${WHEELHOUSE}.old"
mkdir -p "${WHEELHOUSE}"
mv "${tmp}/simple" "${WHEELHOUSE}/simple"
echo "${key}" >"${stamp}"
rm -rf "${WHEELHOUSE}.old"
log "ready: $(find "${WHEELHOUSE}/simple" -name '*.whl' | wc -l) wheels, $(du -sh "${WHEELHOUSE}" | cut -f1)"
echo "${WHEELHOUSE}"
