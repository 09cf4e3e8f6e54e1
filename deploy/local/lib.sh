# Shared by the scripts in deploy/local. Source it; it sets paths and small helpers.
# shellcheck shell=bash
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Broker data, logs and pid files of this checkout (git-ignored).
STATE_DIR="${PIXELPIPE_STATE_DIR:-$ROOT/.local}"
# Built tools shared by every checkout on this machine, so the broker is built once.
TOOLS_DIR="${PIXELPIPE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pixelpipe}"
TANSU_VERSION="0.6.0"
# Built with its PostgreSQL storage engine only (see kafka.sh for why not SQLite).
TANSU_BIN="$TOOLS_DIR/tansu-$TANSU_VERSION-postgres/bin/tansu"
KAFKA_HOST="127.0.0.1"
KAFKA_PORT="${PIXELPIPE_KAFKA_PORT:-9092}"
KAFKA_ADDR="$KAFKA_HOST:$KAFKA_PORT"

step() { printf '==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is not installed. $2"; }

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_port HOST PORT SECONDS WHAT
wait_port() {
  local deadline=$((SECONDS + $3))
  until port_open "$1" "$2"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# pid_alive FILE: true when FILE names a running process.
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid FILE WHAT: SIGTERM, wait up to 20 s, then SIGKILL.
stop_pid() {
  local file=$1 what=$2 pid
  if ! pid_alive "$file"; then
    rm -f "$file"
    note "$what is not running"
    return 0
  fi
  pid=$(cat "$file")
  kill -TERM "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$file"; note "$what stopped"; return 0; }
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
  note "$what did not stop within 20 s and was killed"
}

mkdir -p "$STATE_DIR"

# apt_tool PACKAGE BIN VAR [APT_OPTION...]: Debian's PACKAGE, installed the first time only (when
# BIN is not there yet) and checked to provide BIN. VAR is the variable a user sets to point at a
# BIN of their own instead; the errors name it. Installing needs root.
apt_tool() {
  local package=$1 bin=$2 var=$3
  shift 3
  if [ -x "$bin" ]; then
    note "$package already installed at $bin"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "installing $package needs root: sudo apt-get install -y $package (or set $var)"
  need apt-get "Install $package by hand and set $var to its path."
  step "installing Debian's $package (first time only)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" "$package" >/dev/null ||
    die "apt-get install $package failed"
  [ -x "$bin" ] || die "$package installed but $bin is missing"
  note "installed"
}

# pip_venv DIR WORKS PACKAGE==VERSION...: a venv at DIR holding the pinned packages from PyPI,
# made the first time only. WORKS is a function that succeeds when DIR is usable; it decides
# whether to install and checks the result. The venv is built in DIR.partial and moved into place
# once pip has finished, so an interrupted install is never taken for a finished one. After the
# move its console scripts still name DIR.partial on their first line: callers run a static
# binary from DIR/bin or DIR/bin/python itself, never those scripts.
pip_venv() {
  local venv=$1 works=$2
  shift 2
  if "$works" >/dev/null 2>&1; then
    note "$* already installed in $venv"
    return 0
  fi
  need python3 "Install Python 3 with venv: apt-get install -y python3-venv"
  step "installing $* into $venv (first time only)"
  rm -rf "$venv.partial"
  python3 -m venv "$venv.partial" || die "python3 -m venv failed (apt-get install -y python3-venv)"
  "$venv.partial/bin/pip" install -q "$@" || die "pip install $* failed"
  rm -rf "$venv" && mv "$venv.partial" "$venv"
  "$works" >/dev/null || die "$* does not work from $venv"
  note "installed"
}

# http_status PORT PATH: the HTTP status of GET PATH on 127.0.0.1:PORT ("000" when nothing answers).
http_status() {
  local status
  status=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$2" >&3
    head -n 1 <&3 | cut -d' ' -f2) 2>/dev/null) || true
  echo "${status:-000}"
}
