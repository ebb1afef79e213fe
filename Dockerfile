# syntax=docker/dockerfile:1
# Multi-stage build of gws-sms-gateway: a locked release build, then a small runtime image
# that runs as a non-root user and needs no writable root filesystem.

FROM rust:1.88-bookworm AS build
WORKDIR /src
# protoc is vendored by the build script (protoc-bin-vendored): nothing else to install.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY crates ./crates
# Without the default `demo` feature: the production binary contains no simulator.
RUN cargo build --release --locked --no-default-features -p gws-sms-gateway && \
    cp target/release/gws-sms-gateway /gws-sms-gateway

# distroless/cc: glibc and libgcc for the binary, CA certificates for an HTTPS GWS, no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /gws-sms-gateway /usr/local/bin/gws-sms-gateway
# 65532 is distroless's "nonroot"; numeric so Kubernetes can check runAsNonRoot.
USER 65532:65532
# gRPC, then Prometheus metrics.
EXPOSE 50051 9090
ENV GATEWAY_LISTEN=0.0.0.0:50051 \
    GATEWAY_METRICS_LISTEN=0.0.0.0:9090 \
    GATEWAY_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/gws-sms-gateway"]
CMD ["serve"]
