#!/usr/bin/env bash
# rsgo's first run in one command: Docker and a local registry when missing, the example image,
# a release build, the example stack, and `rsgo serve` with the example catalog. Prints the
# console's URL and, the first time only, an Admin key to sign in with.
#   scripts/quickstart.sh [extra rsgo serve options]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/example-image.sh >/dev/null
cargo build --release --locked -q
rsgo=target/release/rsgo
export RSGO_DATA_DIR="${RSGO_DATA_DIR:-./data}"
listen="${RSGO_LISTEN:-127.0.0.1:8080}"
"$rsgo" apply -f examples/stack.yaml >/dev/null
echo "rsgo console: http://$listen/"
if ! "$rsgo" apikey list -o json | grep -q '"Admin"'; then
  key=$("$rsgo" apikey create --name "First admin" --permission Admin 2>/dev/null)
  echo "Admin key (shown this once; sign in to the console with it): $key"
else
  echo "An Admin key exists already; create another with: $rsgo apikey create --name NAME --permission Admin"
fi
echo "The example stack 'whoami' answers on http://127.0.0.1:8088/ once it runs. Ctrl-C stops rsgo."
exec "$rsgo" serve --listen "$listen" --catalog examples/catalog "$@"
