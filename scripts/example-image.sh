#!/usr/bin/env bash
# Builds the quickstart's example image (busybox httpd serving a greeting, FROM scratch) and
# pushes it to the local registry that scripts/test-env.sh starts on 127.0.0.1:5000.
set -euo pipefail
cd "$(dirname "$0")/.."
RSGO_ENV_MINIMAL=1 . scripts/test-env.sh
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cp /bin/busybox "$dir/busybox"
mkdir -p "$dir/www"
echo "hello from rsgo" > "$dir/www/index.html"
cat > "$dir/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY www /www
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
DOCKERFILE
image="$RSGO_TEST_REGISTRY/rsgo-example/whoami:latest"
DOCKER_BUILDKIT=0 docker build -q -t "$image" "$dir" >/dev/null
docker push -q "$image"
