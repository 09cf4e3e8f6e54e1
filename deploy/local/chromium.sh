#!/usr/bin/env bash
# Chromium for the browser test of the page snippet (ingest/tests/browser.rs).
#   chromium.sh install   apt-get install Debian's chromium if it is not there
#   chromium.sh path      print the binary's path
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"

install() {
  # About 300 MB the first time.
  apt_tool chromium "$BIN" CHROMIUM_BIN
}

case "${1:-}" in
  install) install ;;
  path) echo "$BIN" ;;
  *) die "usage: $0 install|path" ;;
esac
