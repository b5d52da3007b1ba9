#!/usr/bin/env bash
# rsgo's benchmark command. Prepares what the tests need (Docker, a registry on 127.0.0.1,
# busybox) plus docker-compose for the side-by-side redeploy, then runs the benchmark in a
# release build. Every figure it prints is a ratio or a pair measured in the same run.
#   scripts/bench.sh [CASE...]    cases: hooks memory redeploy resync (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/test-env.sh
if ! command -v docker-compose >/dev/null 2>&1; then
  echo "bench: installing docker-compose" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
cargo bench --locked --bench bench -- "$@"
