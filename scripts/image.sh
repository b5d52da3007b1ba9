#!/usr/bin/env bash
# Builds rsgo's container image FROM scratch: the rsgo binary plus the shared libraries it links
# (glibc and friends) and the public CA certificates, running as a non-root user. Needs no base image and no network.
#   scripts/image.sh [IMAGE] [BINARY]
# IMAGE defaults to rsgo:dev; BINARY defaults to a fresh release build.
set -euo pipefail
cd "$(dirname "$0")/.."
image="${1:-rsgo:dev}"
binary="${2:-}"
if [ -z "$binary" ]; then
  cargo build --release --locked
  binary=target/release/rsgo
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
cp "$binary" "$root/rsgo"
# The dynamic loader and every library ldd resolves, at the same paths.
for lib in $(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# Public CAs, for git sources and `rsgo hook` over HTTPS.
mkdir -p "$root/etc/ssl/certs"
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
cat > "$root/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY . /
USER 65532:65532
ENTRYPOINT ["/rsgo"]
CMD ["serve", "--store=kubernetes", "--listen=0.0.0.0:8080"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build -q -t "$image" "$root" >/dev/null
echo "$image"
