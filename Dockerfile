# syntax=docker/dockerfile:1
# callgate's container image: the release binary on Debian 12 (bookworm), as a non-root user.
#
#   docker build -t callgate:0.1.0 .
#   docker run -d --name callgate --stop-timeout 30 \
#     -p 8080:8080 -p 127.0.0.1:9091:9091 \
#     -e CALLGATE_ADMIN_TOKEN="$(openssl rand -hex 24)" \
#     -v "$PWD/policies:/etc/callgate/policies:ro" -v callgate-data:/var/lib/callgate \
#     callgate:0.1.0
#
# The admin API listens on 0.0.0.0:9091 in the container so that probes can reach it, and
# callgate refuses to start with a non-loopback admin address and no token: pass
# CALLGATE_ADMIN_TOKEN at run time (never bake it into the image). /healthz and /readyz
# need no token; /metrics, /v1/status, /v1/reload, /v1/events and /v1/explain want
# `Authorization: Bearer <token>`.
#
# Policies: the shipped set is in the image at /etc/callgate/policies; mount your own
# directory there (read-only is fine, edits go live without a restart). Records go to
# /var/lib/callgate, which must be writable by uid 65532 (a named volume is, as made from
# the image). One container per data directory: a second one on the same volume refuses
# to start (the directory is locked).
#
# Stopping: `docker stop` sends SIGTERM; callgate then says not ready, keeps answering for
# CALLGATE_SHUTDOWN_DELAY (5s by default, each answer with `Connection: close`), finishes
# requests in flight (at most 10 s more) and exits 0. Docker kills a container 10 s after
# SIGTERM unless told otherwise: give it `--stop-timeout 30` (compose: stop_grace_period).
#
# Every setting is a CALLGATE_* variable (see `docker run --rm callgate:0.1.0 serve --help`).
# tests/deploy.rs checks this file against callgate's settings and deploy/kubernetes.yaml.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The binary leaves the cache mount for the next stage in /callgate.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -m 0755 target/release/callgate /callgate

# Runtime: debian:bookworm-slim rather than gcr.io/distroless/cc-debian12. Both carry what
# the binary links to (libc.so.6, libm.so.6 and the loader from libc6; libgcc_s.so.1 from
# libgcc-s1; nothing else: tests/deploy.rs checks it with ldd), and slim is the builder's
# own Debian release, so its glibc is the one the binary was linked against. Slim has bash,
# which runs the HEALTHCHECK below with no curl (distroless has no shell, so no HEALTHCHECK
# could run there) and lets an operator `docker exec` in; it costs about 50 MB more.
FROM debian:bookworm-slim
# uid/gid 65532, as deploy/kubernetes.yaml's runAsUser/runAsGroup.
RUN groupadd --system --gid 65532 callgate \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin callgate \
    && install -d -o 65532 -g 65532 -m 0700 /var/lib/callgate
COPY --from=build /callgate /usr/local/bin/callgate
COPY policies/ /etc/callgate/policies/
ENV CALLGATE_LISTEN=0.0.0.0:8080 \
    CALLGATE_ADMIN_LISTEN=0.0.0.0:9091 \
    CALLGATE_POLICIES=/etc/callgate/policies \
    CALLGATE_DATA_DIR=/var/lib/callgate
VOLUME ["/etc/callgate/policies", "/var/lib/callgate"]
EXPOSE 8080 9091
USER 65532:65532
WORKDIR /var/lib/callgate
STOPSIGNAL SIGTERM
# Ready to take callbacks: GET /readyz on the admin port answers 200 (503 while draining).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${CALLGATE_ADMIN_LISTEN##*:} && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && read -r _ status _ <&3 && [ \"$status\" = 200 ]"]
ENTRYPOINT ["/usr/local/bin/callgate"]
CMD ["serve"]
