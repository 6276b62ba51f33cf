# The previewd image: one static binary and the CA bundle on an empty base, run as the
# non-root user 65532, with no shell and no package manager. Nothing comes from a registry.
#
# The build context is a directory holding two files (testenv/images/build makes it):
#   previewd              RUSTFLAGS="-C target-feature=+crt-static" cargo build --release \
#                           --locked -p previewd-operator --target x86_64-unknown-linux-gnu
#                         (target/x86_64-unknown-linux-gnu/release/previewd, statically linked)
#   ca-certificates.crt   /etc/ssl/certs/ca-certificates.crt (Debian's ca-certificates)
# and the image is built with Debian's buildah (docker build takes the same arguments):
#   buildah bud --timestamp 0 -f Dockerfile -t ghcr.io/previewd/previewd:0.1.0 DIR
# `--timestamp 0` makes the image reproducible: the same files give the same digest.
FROM scratch
COPY --chmod=0644 ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --chmod=0755 previewd /usr/local/bin/previewd
USER 65532:65532
EXPOSE 8080 8443
ENTRYPOINT ["/usr/local/bin/previewd"]
CMD ["run"]
