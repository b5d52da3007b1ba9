#!/usr/bin/env bash
# rsgo's test command: prepares Docker, a registry and busybox, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/test-env.sh
cargo test --locked --lib --test it "$@"
