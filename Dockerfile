# compose-ingress container image: one statically linked binary, nothing else.
#
#   docker build -t REGISTRY/compose-ingress:0.1.0 .    # docs/install.md; needs rust:* from a registry
#
# Both builders build it from a clean clone: the classic builder builds every stage up to the
# target, so no stage may need anything a clone does not have. The test bed, offline, builds the
# same runtime stage around a binary built on the host (tests/testbed/prebuilt.Dockerfile, a test
# compares the two images' configs) and this file's default target with a stand-in for rust:*
# (tests/testbed/rust-image.sh; tests/e2e/image_build.rs).

ARG VERSION=0.1.0

# --- build: a statically linked release binary (glibc, crt-static; no musl needed) ---------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY http-get ./http-get
# Not compiled: the workspace's manifest names it (a member and the tests' dev-dependency), and
# cargo refuses to load a workspace whose member is missing.
COPY testbed ./testbed
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
