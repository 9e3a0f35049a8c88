# Stand-in for the official nginx image (Debian bookworm based), built from
# Debian's nginx package when the real image cannot be pulled (CI here).
# Like the official image: runs nginx in the foreground, reads
# /etc/nginx/nginx.conf, has user/group nginx (uid/gid 101), logs to the
# container's stdout/stderr, stops gracefully on SIGQUIT.
ARG DEBIAN_BASE=textclf-standin/debian:bookworm-v2
FROM ${DEBIAN_BASE}
ARG STANDIN_RECIPE=dev

# A stand-in tracks Debian bookworm; pinning its package versions would only
# make it fail when the mirror moves on.
# hadolint ignore=DL3008
RUN groupadd --system --gid 101 nginx \
    && useradd --system --uid 101 --gid nginx --no-create-home \
        --home-dir /nonexistent --shell /bin/false nginx \
    && apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates nginx \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* \
    && rm -f /etc/nginx/sites-enabled/default \
    && mkdir -p /var/cache/nginx /etc/nginx/conf.d \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log

COPY nginx-default.conf /etc/nginx/nginx.conf

ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL org.textclf.standin="nginx" \
      org.textclf.standin.recipe="${STANDIN_RECIPE}"
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
