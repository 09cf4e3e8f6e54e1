#!/usr/bin/env bash
# chDB: ClickHouse as an in-process library (PyPI chdb-core), used by the tests to prove that the
# sink's modern-server DDL and RowBinary rows load into a current ClickHouse (26.x).
#   chdb.sh install   make a venv under the tools dir and pip install chdb-core (once per machine)
#   chdb.sh python    print the venv's python path
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHDB_VERSION="26.9.0"
VENV="$TOOLS_DIR/chdb-$CHDB_VERSION"
PYTHON="$VENV/bin/python"

install() {
  if [ -x "$PYTHON" ] && "$PYTHON" -c 'import chdb' 2>/dev/null; then
    note "chdb-core $CHDB_VERSION already installed in $VENV"
    return 0
  fi
  need python3 "Install Python 3 with venv: apt-get install -y python3-venv"
  step "installing chdb-core $CHDB_VERSION into $VENV (about 180 MB, first time only)"
  rm -rf "$VENV.partial"
  python3 -m venv "$VENV.partial" || die "python3 -m venv failed (apt-get install -y python3-venv)"
  "$VENV.partial/bin/pip" install -q "chdb-core==$CHDB_VERSION" || die "pip install chdb-core==$CHDB_VERSION failed"
  rm -rf "$VENV" && mv "$VENV.partial" "$VENV"
  # The venv's scripts name the .partial path; python itself does not care, and it is all we run.
  "$PYTHON" -c 'import chdb' || die "chdb-core does not import from $VENV"
  note "installed"
}

case "${1:-}" in
  install) install ;;
  python) echo "$PYTHON" ;;
  *) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
