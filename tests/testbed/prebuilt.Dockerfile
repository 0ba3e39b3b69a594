# The bed's sidecar image, offline: the Dockerfile's runtime stage around the static release
# binary built on this machine (tests/testbed/image.sh builds it, and its context: this file as
# Dockerfile, the binary at target/static/compose-ingress). A separate file, because the classic
# builder (the bed's docker client has no buildx) builds every stage of a Dockerfile up to its
# target: as a stage of the Dockerfile it would need this binary in a user's clean clone.
# Keep the runtime lines as the Dockerfile has them: tests/e2e/image_build.rs compares the two
# images' configs (labels, user, entrypoint, ports).
ARG VERSION=0.1.0
FROM scratch AS runtime
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
