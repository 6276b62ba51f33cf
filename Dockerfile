# A small static image of the previewd binary.
#
#   docker build -t ghcr.io/previewd/previewd:0.1.0 .
#
# Build stage: a pinned Rust toolchain producing a fully static musl binary (ring's C and
# assembly parts are compiled with musl-gcc). Runtime stage: distroless "static" as the
# non-root user 65532, with no shell and no package manager. Tags are pinned; pin digests
# as well in your registry mirror (`image@sha256:...`) when you build for production.
FROM docker.io/library/rust:1.95.0-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p previewd-operator --target x86_64-unknown-linux-musl \
 && install -D -m 0755 target/x86_64-unknown-linux-musl/release/previewd /out/previewd

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/previewd /usr/local/bin/previewd
USER 65532:65532
EXPOSE 8080 8443
ENTRYPOINT ["/usr/local/bin/previewd"]
CMD ["run"]
