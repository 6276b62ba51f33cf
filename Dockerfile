# The previewd image: the binary and the CA bundle on an empty base, run as the non-root
# user 65532, with no shell and no package manager. Nothing comes from a registry.
#
# The build context is a directory holding `rootfs/`, copied as the image's root file
# system (testenv/images/build makes it):
#   rootfs/usr/local/bin/previewd          the binary. The shipped image takes the static
#                                          release build:
#                                            RUSTFLAGS="-C target-feature=+crt-static" \
#                                              cargo build --release --locked -p previewd-operator \
#                                              --target x86_64-unknown-linux-gnu
#                                          (a dynamically linked build works too, with its
#                                          loader and libraries under rootfs/ where ldd
#                                          finds them: the test suite's image)
#   rootfs/etc/ssl/certs/ca-certificates.crt  Debian's CA bundle
# and the image is built with Debian's buildah (docker build takes the same arguments):
#   buildah bud --timestamp 0 -f Dockerfile -t ghcr.io/previewd/previewd:0.1.0 DIR
# `--timestamp 0` makes the image reproducible: the same files give the same digest.
FROM scratch
COPY rootfs/ /
USER 65532:65532
EXPOSE 8080 8443
ENTRYPOINT ["/usr/local/bin/previewd"]
CMD ["run"]
