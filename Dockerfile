# syntax=docker/dockerfile:1
# Two images from one build:
#   docker build --target broker   -t ghcr.io/coolpy7/coolpy7:0.1.0 .
#   docker build --target operator -t ghcr.io/coolpy7/coolpy7-operator:0.1.0 .

FROM rust:1.95-bookworm AS build
# The release profile keeps line tables for profiling; images do not need them.
ENV CARGO_PROFILE_RELEASE_DEBUG=0
WORKDIR /src
COPY . .
# jemalloc (the broker's allocator) fixes its page size when it is built, and one built for
# 4 KiB pages will not start on an arm64 kernel with 64 KiB pages; 64 KiB works on both.
ARG TARGETARCH
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ "$TARGETARCH" = arm64 ]; then export JEMALLOC_SYS_WITH_LG_PAGE=16; fi \
    && cargo build --release --locked -p coolpy7 -p coolpy7-operator \
        --bin coolpy7 --bin coolpy7-operator \
    && mkdir -p /out \
    && cp target/release/coolpy7 target/release/coolpy7-operator /out/

# A runtime with only the C library and CA certificates; numeric non-root user, so that
# Kubernetes' runAsNonRoot can check it.
FROM gcr.io/distroless/cc-debian12:nonroot AS broker
COPY --from=build /out/coolpy7 /usr/local/bin/coolpy7
USER 65532:65532
EXPOSE 1883/tcp 7946/udp 7947/udp 8081/tcp
ENTRYPOINT ["/usr/local/bin/coolpy7"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/coolpy7-operator /usr/local/bin/coolpy7-operator
USER 65532:65532
EXPOSE 8080/tcp
ENTRYPOINT ["/usr/local/bin/coolpy7-operator"]
