#!/usr/bin/env bash
# Provide the base images the Dockerfile and Compose name, WITHOUT pulling.
#
# For each official image name: when the engine already has it (pulled or
# loaded by someone), it is used as is. Otherwise a stand-in is built from
# Debian packages and tagged with that name: a minimal bookworm root
# filesystem (debootstrap, cached as a tarball outside the clone) imported as
# textclf-standin/debian:bookworm, then deploy/standin/*.Dockerfile on top.
# Images stay in the engine, so a warm re-run does nothing.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${TEXTCLF_CACHE_DIR:-${HOME}/.cache/textclf}"
PYTHON_IMAGE="${PYTHON_IMAGE:-python:3.11-slim-bookworm}"
NGINX_IMAGE="${NGINX_IMAGE:-nginx:1.28-bookworm}"
# The `monitoring` Compose profile's Prometheus (stand-in: Debian's prometheus 2.42).
PROMETHEUS_IMAGE="${PROMETHEUS_IMAGE:-prom/prometheus:v2.53.4}"
DEBIAN_STANDIN="textclf-standin/debian:bookworm-v2"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Bump the suffix when the rootfs recipe below changes.
ROOTFS_TAR="${CACHE}/rootfs/debian-bookworm-minbase-v2.tar"

log() { printf '[base-images] %s\n' "$*" >&2; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

ensure_debian_standin() {
    have_image "${DEBIAN_STANDIN}" && return 0
    if [[ ! -s "${ROOTFS_TAR}" ]]; then
        command -v debootstrap >/dev/null || { log "debootstrap missing (deploy/ci/ensure-docker.sh installs it)"; exit 1; }
        local root
        root="$(mktemp -d "${TMPDIR:-/tmp}/textclf-rootfs.XXXXXX")"
        log "debootstrap bookworm minbase -> ${ROOTFS_TAR} (about a minute)"
        # minbase: essential + apt, which includes passwd (useradd) and bash.
        debootstrap --variant=minbase bookworm "${root}" "${DEBIAN_MIRROR}" >"${CACHE}/debootstrap.log" 2>&1 \
            || { tail -n 20 "${CACHE}/debootstrap.log" >&2; rm -rf "${root}"; exit 1; }
        # The same sources an official Debian image has (with security updates).
        cat >"${root}/etc/apt/sources.list" <<SOURCES
deb ${DEBIAN_MIRROR} bookworm main
deb ${DEBIAN_MIRROR} bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
        # Keep images small like Debian's slim docker images: no recommends,
        # no docs/man pages/translations now or in later installs.
        printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
            >"${root}/etc/apt/apt.conf.d/90textclf-norecommends"
        printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
            'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
            'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
            >"${root}/etc/dpkg/dpkg.cfg.d/90textclf-slim"
        find "${root}/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
        rm -rf "${root}"/usr/share/man/* "${root}"/usr/share/info/* "${root}"/var/cache/apt/* \
            "${root}"/var/lib/apt/lists/*
        find "${root}/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
        mkdir -p "$(dirname "${ROOTFS_TAR}")"
        tar -C "${root}" --numeric-owner -cf "${ROOTFS_TAR}.tmp" .
        mv "${ROOTFS_TAR}.tmp" "${ROOTFS_TAR}"
        rm -rf "${root}"
    fi
    log "importing ${ROOTFS_TAR} as ${DEBIAN_STANDIN}"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        "${ROOTFS_TAR}" "${DEBIAN_STANDIN}" >/dev/null
}

build_standin() {  # <official name> <stand-in Dockerfile>
    local name="$1" dockerfile="$2" recipe current
    # The recipe: this stand-in's files and the root filesystem's version.
    recipe="$( (echo "${ROOTFS_TAR##*/}" && cat "${REPO_ROOT}/deploy/standin/${dockerfile}" \
        "${REPO_ROOT}/deploy/standin/nginx-default.conf") | sha256sum | cut -c1-16)"
    if have_image "${name}"; then
        # Official images carry no org.textclf.standin label: never replaced.
        current="$(docker image inspect -f '{{index .Config.Labels "org.textclf.standin"}}/{{index .Config.Labels "org.textclf.standin.recipe"}}' "${name}")"
        if [[ "${current}" == "/" || "${current}" == "<no value>/<no value>" ]]; then
            log "${name}: present (not a stand-in: used as is)"
            return 0
        fi
        current="${current#*/}"
        if [[ "${current}" == "${recipe}" ]]; then
            log "${name}: stand-in up to date (${recipe})"
            return 0
        fi
        log "${name}: stand-in recipe changed (${current} -> ${recipe}): rebuilding"
    else
        log "${name}: absent, building a stand-in from ${dockerfile##*/}"
    fi
    ensure_debian_standin
    # --network host: apt inside the build reaches Debian's mirror like the host does.
    local build_log="${CACHE}/standin-${dockerfile%.Dockerfile}.log"
    if ! docker build --network host \
        --build-arg DEBIAN_BASE="${DEBIAN_STANDIN}" --build-arg STANDIN_RECIPE="${recipe}" \
        -f "${REPO_ROOT}/deploy/standin/${dockerfile}" \
        -t "${name}" "${REPO_ROOT}/deploy/standin" >"${build_log}" 2>&1; then
        tail -n 30 "${build_log}" >&2
        log "${name}: stand-in build failed (log: ${build_log})"
        exit 1
    fi
}

mkdir -p "${CACHE}"
build_standin "${PYTHON_IMAGE}" python.Dockerfile
build_standin "${NGINX_IMAGE}" nginx.Dockerfile
build_standin "${PROMETHEUS_IMAGE}" prometheus.Dockerfile
