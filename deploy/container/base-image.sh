#!/usr/bin/env bash
# The image every domainlift container starts FROM (bentofile.yaml docker.base_image), built here from Debian's
# packages, so no image registry is needed: Debian bookworm (minbase) with Python 3.11, venv and pip, and the CA
# certificates of the host that builds it (a TLS-inspecting proxy's CA included, so pip and uv reach the package
# index from inside the build as they do from the host). pip may install into its Python (no PEP 668 marker):
# the image has no other user of it.
#   deploy/container/base-image.sh [engine] [image]      (defaults: podman, localhost/domainlift-base:bookworm)
set -euo pipefail
engine=${1:-podman}
image=${2:-localhost/domainlift-base:bookworm}
if "$engine" image inspect "$image" >/dev/null 2>&1; then
  echo "$image is there already"
  exit 0
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,passwd \
  bookworm "$root" "$mirror"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/*
tar -C "$root" -c . | "$engine" import \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV UV_NATIVE_TLS=1' \
  --change 'CMD ["/bin/bash"]' \
  - "$image"
echo "built $image"
