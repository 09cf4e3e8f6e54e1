#!/usr/bin/env bash
# chDB: ClickHouse as an in-process library (PyPI chdb-core), used by the tests to prove that the
# sink's modern-server DDL and RowBinary rows load into a current ClickHouse (26.x).
#   chdb.sh install   make a venv under the tools dir and pip install chdb-core (once per machine)
#   chdb.sh python    print the venv's python path
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHDB_VERSION="26.9.0"
VENV="$TOOLS_DIR/chdb-$CHDB_VERSION"
PYTHON="$VENV/bin/python"

works() { [ -x "$PYTHON" ] && "$PYTHON" -c 'import chdb'; }

case "${1:-}" in
  # About 180 MB the first time.
  install) pip_venv "$VENV" works "chdb-core==$CHDB_VERSION" ;;
  python) echo "$PYTHON" ;;
  *) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
