# compose-ingress container image: one statically linked binary, nothing else.
#
#   docker build -t compose-ingress .                                  # full build (needs a registry for rust:*)
#   tests/testbed/image.sh                                             # offline: prebuilt binary (below)
#
# Stages are ordered so that the classic builder (which builds every stage up to --target) and
# BuildKit can both build `runtime-prebuilt` without pulling anything: it comes first and needs
# only the static binary in the build context at target/static/compose-ingress.

ARG VERSION=0.1.0

# --- runtime-prebuilt: the runtime image around a binary built on the host -----------------------
#   cargo build --release --target x86_64-unknown-linux-gnu --target-dir target/static \
#     (with RUSTFLAGS="-C target-feature=+crt-static"), copied to target/static/compose-ingress
FROM scratch AS runtime-prebuilt
ARG VERSION
LABEL org.opencontainers.image.title="compose-ingress" \
      org.opencontainers.image.description="Sidecar that exposes docker-compose projects of a dind runner pod through a Kubernetes Service + Ingress/HTTPRoute" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/example/compose-ingress"
COPY target/static/compose-ingress /compose-ingress
USER 65532:65532
EXPOSE 9102
ENTRYPOINT ["/compose-ingress"]

# --- build: a statically linked release binary (glibc, crt-static; no musl needed) ---------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY http-get ./http-get
# --target is required with crt-static: it keeps build scripts and proc-macros dynamically linked.
RUN RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked --release --target x86_64-unknown-linux-gnu --bin compose-ingress \
 && cp target/x86_64-unknown-linux-gnu/release/compose-ingress /compose-ingress

# --- runtime (default target): the same image, with the binary from the build stage --------------
FROM scratch AS runtime
ARG VERSION
LABEL org.opencontainers.image.title="compose-ingress" \
      org.opencontainers.image.description="Sidecar that exposes docker-compose projects of a dind runner pod through a Kubernetes Service + Ingress/HTTPRoute" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/example/compose-ingress"
COPY --from=build /compose-ingress /compose-ingress
USER 65532:65532
EXPOSE 9102
ENTRYPOINT ["/compose-ingress"]
