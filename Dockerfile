# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, ship only the binary on a distroless base.

FROM rust:1-bookworm AS build
WORKDIR /src
# Build dependencies first so code changes don't rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin wsgate && rm -rf src
# The context has no .git: pass the commit for --version and wsgate_build_info, e.g.
# `docker build --build-arg WSGATE_GIT_COMMIT=$(git rev-parse --short=12 HEAD) .`
ARG WSGATE_GIT_COMMIT=unknown
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin wsgate \
    && strip target/release/wsgate

# glibc + ca-certificates (for wss:// upstreams), no shell, runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/wsgate /usr/local/bin/wsgate
WORKDIR /etc/wsgate
# Mount your config.yaml, certificates and htpasswd here; ${VAR}s come from the environment.
ENV WSGATE_CONFIG=/etc/wsgate/config.yaml
USER nonroot:nonroot
# Plain, TLS and admin ports of the example config (bind 0.0.0.0 inside a container).
EXPOSE 8080 8443 9190
# The health check probes this address and never reads the config, so a mounted config being
# edited (or saved with an error, or naming a port not reloaded yet) cannot fail a healthy
# container. Override it to match your config: another admin port, a plain listener
# (127.0.0.1:8080) or a TLS one (https://127.0.0.1:8443); set it empty to use the config.
ENV WSGATE_HEALTHCHECK_ADDR=127.0.0.1:9190
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/wsgate", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/wsgate"]
