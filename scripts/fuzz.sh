#!/usr/bin/env bash
# Fuzzes rsgo's parsers with cargo-fuzz (libFuzzer): hook bodies, manifests and apply documents.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default: 60 s, every target)
# Needs cargo-fuzz (installed when missing); on a stable toolchain RUSTC_BOOTSTRAP=1 enables the
# compiler flags libFuzzer needs. Corpora grow in fuzz/corpus (seeded from examples/), crashes
# land in fuzz/artifacts. Prints each target's execution count; exits non-zero on a crash.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"
seconds="${1:-60}"
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(hook_body manifest apply_documents)
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1

seed() { # target, files...
  local dir="corpus/$1"; shift
  mkdir -p "$dir"
  for file in "$@"; do cp -n "$file" "$dir/" 2>/dev/null || true; done
}
seed manifest "$root"/examples/catalog/*/*.yaml
seed apply_documents "$root"/examples/*.yaml "$root"/examples/kubernetes/*.yaml
mkdir -p corpus/hook_body
printf '{"stackName": "shop", "environmentId": "local", "wait": true}' >corpus/hook_body/redeploy.json
printf '{"stackName": "shop", "targetVersion": "6.5.0", "variables": {"A": "b"}}' >corpus/hook_body/upgrade.json

failed=0
for target in "${targets[@]}"; do
  log="$(mktemp)"
  if cargo fuzz run -O "$target" "corpus/$target" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=CRASHED
    failed=1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  echo "$target: $result after $runs executions in ${seconds}s"
  if [ "$result" != ok ]; then
    grep -E "panicked|ERROR|SUMMARY|artifact" "$log" || tail -20 "$log"
  fi
  rm -f "$log"
done
exit "$failed"
