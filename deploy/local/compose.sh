#!/usr/bin/env bash
# Debian's docker-compose, which parses and checks deploy/compose/docker-compose.yml without a
# container engine (ingest/tests/packaging.rs runs `docker-compose config`).
#   compose.sh install   apt-get install docker-compose if it is not there
#   compose.sh path      print the binary's path
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN="${DOCKER_COMPOSE_BIN:-/usr/bin/docker-compose}"

install() {
  if [ -x "$BIN" ]; then
    note "docker-compose already installed at $BIN"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "installing docker-compose needs root: sudo apt-get install -y docker-compose (or set DOCKER_COMPOSE_BIN)"
  need apt-get "Install docker-compose by hand and set DOCKER_COMPOSE_BIN to its path."
  step "installing Debian's docker-compose (first time only; no container engine is installed)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null ||
    die "apt-get install docker-compose failed"
  [ -x "$BIN" ] || die "docker-compose installed but $BIN is missing"
  note "installed"
}

case "${1:-}" in
  install) install ;;
  path) echo "$BIN" ;;
  *) die "usage: $0 install|path" ;;
esac
