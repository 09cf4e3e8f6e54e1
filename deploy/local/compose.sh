#!/usr/bin/env bash
# Debian's docker-compose, which parses and checks deploy/compose/docker-compose.yml without a
# container engine (ingest/tests/packaging.rs runs `docker-compose config`).
#   compose.sh install   apt-get install docker-compose if it is not there
#   compose.sh path      print the binary's path
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN="${DOCKER_COMPOSE_BIN:-/usr/bin/docker-compose}"

install() {
  apt_tool docker-compose "$BIN" DOCKER_COMPOSE_BIN --no-install-recommends
}

case "${1:-}" in
  install) install ;;
  path) echo "$BIN" ;;
  *) die "usage: $0 install|path" ;;
esac
