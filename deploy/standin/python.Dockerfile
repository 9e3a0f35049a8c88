# Stand-in for the official python:3.11-slim-bookworm image, built from Debian
# packages when the real image cannot be pulled (CI here). Only tagged with the
# official name when that image is absent (deploy/ci/base-images.sh).
# Debian bookworm's python3 is 3.11, like the official tag.
ARG DEBIAN_BASE=textclf-standin/debian:bookworm-v2
FROM ${DEBIAN_BASE}
ARG STANDIN_RECIPE=dev

# python/pip/venv usable the way the official image's are: `python`, `pip` and
# `python -m venv` (with ensurepip) work, and pip may install as root.
# A stand-in tracks Debian bookworm; pinning its package versions would only
# make it fail when the mirror moves on.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates python3 python3-venv python3-pip python-is-python3 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* \
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED \
    && ln -s /usr/bin/pip3 /usr/local/bin/pip

# The official image's environment (PATH includes the sbin dirs).
ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHON_VERSION=3.11
LABEL org.textclf.standin="python:3.11-slim-bookworm" \
      org.textclf.standin.recipe="${STANDIN_RECIPE}"
CMD ["python3"]
