#!/usr/bin/env bash
# Chromium for the browser test of the page snippet (ingest/tests/browser.rs).
#   chromium.sh install   apt-get install Debian's chromium if it is not there
#   chromium.sh path      print the binary's path
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"

install() {
  if [ -x "$BIN" ]; then
    note "chromium already installed at $BIN"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "installing Chromium needs root: sudo apt-get install -y chromium (or set CHROMIUM_BIN)"
  need apt-get "Install Chromium by hand and set CHROMIUM_BIN to its path."
  step "installing Debian's chromium (about 300 MB, first time only)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ||
    die "apt-get install chromium failed"
  [ -x "$BIN" ] || die "chromium installed but $BIN is missing"
  note "installed"
}

case "${1:-}" in
  install) install ;;
  path) echo "$BIN" ;;
  *) die "usage: $0 install|path" ;;
esac
