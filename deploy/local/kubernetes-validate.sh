#!/usr/bin/env bash
# kubernetes-validate, which checks Kubernetes manifests against the API's published schemas
# offline, for the tests of deploy/k8s (ingest/tests/kubernetes.rs).
#   kubernetes-validate.sh install   make a venv under the tools dir and pip install it (once per machine)
#   kubernetes-validate.sh path      print the command to run
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KUBERNETES_VALIDATE_VERSION="1.37.0"
VENV="$TOOLS_DIR/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
# The venv's own console script names the path it was built in (see pip_venv in lib.sh), so the
# command is a wrapper beside bin/ that runs the module with the venv's python.
BIN="$VENV/kubernetes-validate"

# pip does not make the wrapper: write it into a venv that lacks it, then run it.
works() {
  [ -x "$VENV/bin/python" ] || return 1
  if [ ! -x "$BIN" ]; then
    printf '#!/bin/sh\nexec "$(dirname "$0")/bin/python" -m kubernetes_validate "$@"\n' >"$BIN"
    chmod +x "$BIN"
  fi
  "$BIN" --version
}

case "${1:-}" in
  install) pip_venv "$VENV" works "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" ;;
  path) echo "$BIN" ;;
  *) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
