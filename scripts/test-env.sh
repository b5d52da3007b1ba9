#!/usr/bin/env bash
# Makes what rsgo's tests need available, installing and starting only what is missing:
# a Docker engine, a registry on 127.0.0.1, busybox for building test images FROM scratch,
# git and OpenSSH for the repositories the git catalog tests serve, and headless Chromium with
# its WebDriver for the web console's test.
# Source it (`. scripts/test-env.sh`) to get RSGO_TEST_REGISTRY exported.
set -euo pipefail

RSGO_TEST_REGISTRY="${RSGO_TEST_REGISTRY:-127.0.0.1:5000}"
state_dir="${RSGO_TEST_STATE:-/tmp/rsgo-test-env}"
mkdir -p "$state_dir"

need_packages=()
command -v dockerd >/dev/null 2>&1 || need_packages+=(docker.io)
command -v docker-registry >/dev/null 2>&1 || need_packages+=(docker-registry)
[ -x /bin/busybox ] || need_packages+=(busybox-static)
command -v curl >/dev/null 2>&1 || need_packages+=(curl)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need_packages+=(ca-certificates)
command -v git >/dev/null 2>&1 || need_packages+=(git)
command -v ssh >/dev/null 2>&1 || need_packages+=(openssh-client)
[ -x /usr/sbin/sshd ] || need_packages+=(openssh-server)
# RSGO_ENV_MINIMAL=1 (the quickstart) wants Docker and the registry only.
if [ -z "${RSGO_ENV_MINIMAL:-}" ]; then
  [ -x /usr/bin/chromium ] || need_packages+=(chromium)
  [ -x /usr/bin/chromedriver ] || need_packages+=(chromium-driver)
fi
if [ "${#need_packages[@]}" -gt 0 ]; then
  echo "test-env: installing ${need_packages[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi

wait_for() { # description, attempts, command...
  local what=$1 tries=$2; shift 2
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "test-env: $what did not come up" >&2; return 1
}

if ! docker info >/dev/null 2>&1; then
  echo "test-env: starting dockerd (log: $state_dir/dockerd.log)" >&2
  # Every stack has its own network; the engine's default pools hold about 30, so the
  # benchmark's 1 000 stacks need the private 172.16.0.0/12 cut into /24s (4 096 networks).
  nohup dockerd --default-address-pool base=172.16.0.0/12,size=24 >"$state_dir/dockerd.log" 2>&1 &
  wait_for "dockerd" 120 docker info
fi

# Networks left by interrupted test runs use up the engine's address pools; only unused ones
# carrying rsgo's label go.
docker network prune -f --filter label=io.rsgo.managed=true >/dev/null
# Every test builds images under a name of its own; those of earlier runs that no container
# uses go too, or a developer's engine gathers a few hundred more with every run.
docker image prune -af --filter label=rsgo.test-image=true >/dev/null

if ! curl -sf "http://$RSGO_TEST_REGISTRY/v2/" >/dev/null; then
  echo "test-env: starting a registry on $RSGO_TEST_REGISTRY" >&2
  mkdir -p "$state_dir/registry"
  cat >"$state_dir/registry.yml" <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: $state_dir/registry
  delete:
    enabled: true
http:
  addr: $RSGO_TEST_REGISTRY
log:
  level: warn
YAML
  nohup docker-registry serve "$state_dir/registry.yml" >"$state_dir/registry.log" 2>&1 &
  wait_for "the registry" 60 curl -sf "http://$RSGO_TEST_REGISTRY/v2/"
fi

# Real Helm (as a library) and kubernetes-validate, for the chart tests, and Selenium, for the
# console test, in a private venv.
venv="$state_dir/venv"
if [ -z "${RSGO_ENV_MINIMAL:-}" ] && ! "$venv/bin/python" -c "import helm_python, kubernetes_validate, yaml, selenium" >/dev/null 2>&1; then
  echo "test-env: installing helm-python-sdk, kubernetes-validate and selenium into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check helm-python-sdk kubernetes-validate pyyaml selenium
fi

export RSGO_TEST_REGISTRY
export RSGO_TEST_BUSYBOX=/bin/busybox
export RSGO_TEST_PYTHON="$venv/bin/python"
