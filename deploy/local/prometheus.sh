#!/usr/bin/env bash
# Debian's Prometheus and promtool, for the test that scrapes a real edge and sink with
# deploy/prometheus/prometheus.yml and unit-tests the alert rules (ingest/tests/prometheus.rs).
#   prometheus.sh install   apt-get install prometheus if it is not there (no service is started)
#   prometheus.sh path      print the prometheus binary's path (promtool is beside it)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN="${PROMETHEUS_BIN:-/usr/bin/prometheus}"

install() {
  local promtool
  promtool="$(dirname "$BIN")/promtool"
  if [ -x "$BIN" ] && [ -x "$promtool" ]; then
    note "prometheus already installed at $BIN"
    return 0
  fi
  # The package would start its own service on 127.0.0.1:9090, the edge's admin port: a
  # policy-rc.d answering 101 ("action forbidden", invoke-rc.d's convention) keeps it stopped.
  local policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ] && [ "$(id -u)" = 0 ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
    # Removed however the install ends: left behind, it would stop every service start here.
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt_tool prometheus "$promtool" PROMETHEUS_BIN --no-install-recommends
  # Nor at the next boot, where systemd runs.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  [ -x "$BIN" ] || die "prometheus installed but $BIN is missing"
}

case "${1:-}" in
  install) install ;;
  path) echo "$BIN" ;;
  *) die "usage: $0 install|path" ;;
esac
