# Text-classification inference service image (CPU by default, CUDA by build args).
#
#   CPU:   docker build -t textclf:cpu .
#   CUDA:  docker build -t textclf:cuda --build-arg TORCH_VARIANT=cuda \
#              --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#          (TORCH_INDEX_URL= empty takes torch from PIP_INDEX_URL: PyPI's Linux
#           torch wheel is the CUDA build and brings its CUDA runtime as wheels;
#           the GPU driver comes from the host through the NVIDIA container toolkit)
#   Mirror / air-gapped: --build-arg PIP_INDEX_URL=... PIP_EXTRA_INDEX_URL=...
#          PIP_FIND_LINKS=... PIP_TRUSTED_HOST=... (and TORCH_INDEX_URL= empty
#          when the mirror serves torch too).
#
# The model is not baked in: mount a save_pretrained folder at /models/default
# (docker-compose.yml mounts ./model/default there read-only) or elsewhere and
# set TEXTCLF_MODEL_PATH (or its alias MODEL_PATH).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder ---
FROM ${PYTHON_IMAGE} AS builder

# 1: strip symbol tables from shared libraries (needs binutils from apt: about
# 120 MB smaller). 0 for a build with no Debian mirror at hand.
ARG STRIP_SYMBOLS=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=120 \
    PIP_ROOT_USER_ACTION=ignore

# binutils for `strip` only; this stage is thrown away, the runtime has no build tools.
# hadolint ignore=DL3008
RUN if [ "${STRIP_SYMBOLS}" = 1 ] && ! command -v strip >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends binutils \
        && rm -rf /var/lib/apt/lists/*; \
    fi

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}

# Dependencies before code: this layer is rebuilt only when requirements.txt changes.
# torch first, from its variant's index; every other pin from PIP_INDEX_URL.
# Empty pip build args are dropped (pip would read "" as a setting). The torch
# pin is the one in requirements.txt (hence DL3013 cannot see it).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
COPY requirements.txt /tmp/requirements.txt
# hadolint ignore=DL3013
RUN if [ -z "${PIP_INDEX_URL:-}" ]; then unset PIP_INDEX_URL; fi \
    && if [ -z "${PIP_EXTRA_INDEX_URL:-}" ]; then unset PIP_EXTRA_INDEX_URL; fi \
    && if [ -z "${PIP_FIND_LINKS:-}" ]; then unset PIP_FIND_LINKS; fi \
    && if [ -z "${PIP_TRUSTED_HOST:-}" ]; then unset PIP_TRUSTED_HOST; fi \
    && torch_pin="$(grep -E '^torch==' /tmp/requirements.txt)" \
    && pip install --no-compile ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} "${torch_pin}" \
    && pip install --no-compile -r /tmp/requirements.txt

# cpu | cuda: the build fails when the installed torch is not that variant.
# Declared here, after the install, so that changing it keeps that layer cached.
ARG TORCH_VARIANT=cpu
COPY deploy/docker/slim-venv.sh deploy/docker/warm_imports.py /tmp/build/
RUN sh /tmp/build/slim-venv.sh /opt/venv "${STRIP_SYMBOLS}" \
    && env -u PYTHONDONTWRITEBYTECODE python /tmp/build/warm_imports.py "${TORCH_VARIANT}"

# ---------------------------------------------------------------- runtime ---
FROM ${PYTHON_IMAGE} AS runtime

# A fixed, non-root uid/gid (matches `user:` in docker-compose.yml).
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --no-create-home \
        --home-dir /tmp --shell /usr/sbin/nologin app

COPY --from=builder /opt/venv /opt/venv

WORKDIR /srv
COPY deploy/docker/healthcheck.py /srv/deploy/docker/healthcheck.py
COPY app/ /srv/app/
# Byte code now: at run time the root filesystem is read-only.
RUN python -m compileall -q /srv/app /srv/deploy

# HF_HUB_OFFLINE: the model is a mounted folder; never reach for a hub.
# The service's own defaults are set through the aliases HOST, PORT and
# MODEL_PATH, the weakest names: `docker run -e TEXTCLF_PORT=...` and
# `-e PORT=...` both override them (an image-level TEXTCLF_PORT would beat a
# user's PORT). Every other setting: -e TEXTCLF_<NAME>=... (see .env.example).
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TRANSFORMERS_OFFLINE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    MODEL_PATH=/models/default

USER 10001:10001
EXPOSE 8000

# Python's urllib (the image has no curl): healthy only while /ready says 200
# (on TEXTCLF_PORT, else PORT).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/srv/deploy/docker/healthcheck.py"]

# SIGTERM starts the app's graceful drain (TEXTCLF_GRACEFUL_TIMEOUT_S).
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app"]

# Last: the revision changes with every commit and must not invalidate the layers above.
ARG TORCH_VARIANT=cpu
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="textclf" \
      org.opencontainers.image.description="Batched Hugging Face text-classification inference service (FastAPI)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.textclf.torch-variant="${TORCH_VARIANT}"
