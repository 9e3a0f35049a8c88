# Stand-in for the official prom/prometheus image, built from Debian bookworm's
# prometheus package (2.42) when the real image cannot be pulled (CI here).
# Like the official image: entrypoint /bin/prometheus with the same default
# flags, runs as nobody (65534), reads /etc/prometheus/prometheus.yml, keeps
# its TSDB in /prometheus (owned by nobody), listens on 9090. Compose's
# `command:` (flags only) therefore works on both.
ARG DEBIAN_BASE=textclf-standin/debian:bookworm-v2
FROM ${DEBIAN_BASE}
ARG STANDIN_RECIPE=dev

# A stand-in tracks Debian bookworm; pinning its package versions would only
# make it fail when the mirror moves on. The package's init scripts never run
# (no init in a container); its consoles live in /etc/prometheus, the official
# image's in /usr/share/prometheus: the links make the official flags valid.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates prometheus \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* \
    && mkdir -p /prometheus /usr/share/prometheus \
    && ln -s /etc/prometheus/console_libraries /usr/share/prometheus/console_libraries \
    && ln -s /etc/prometheus/consoles /usr/share/prometheus/consoles \
    && chown -R 65534:65534 /prometheus \
    && /bin/prometheus --version

ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL org.textclf.standin="prometheus" \
      org.textclf.standin.recipe="${STANDIN_RECIPE}"
USER 65534:65534
EXPOSE 9090
VOLUME ["/prometheus"]
WORKDIR /prometheus
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", \
     "--storage.tsdb.path=/prometheus", \
     "--web.console.libraries=/usr/share/prometheus/console_libraries", \
     "--web.console.templates=/usr/share/prometheus/consoles"]
