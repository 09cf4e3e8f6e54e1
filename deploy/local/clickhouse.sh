#!/usr/bin/env bash
# The local ClickHouse server on 127.0.0.1, with its data under this checkout.
#   clickhouse.sh install    apt-get install clickhouse-server clickhouse-client (needs root)
#   clickhouse.sh start      install if needed, start, wait until it answers
#   clickhouse.sh stop | status
# Another instance beside the default one (tests that stop ClickHouse use their own):
#   CH_NAME=x CH_HTTP_PORT=18123 CH_TCP_PORT=19000 CH_INTERSERVER_PORT=19009 clickhouse.sh start
# Debian ships server 18.16 here; production runs modern ClickHouse, and the sink handles both.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CH_NAME="${CH_NAME:-default}"
CH_HTTP_PORT="${CH_HTTP_PORT:-8123}"
CH_TCP_PORT="${CH_TCP_PORT:-9000}"
CH_INTERSERVER_PORT="${CH_INTERSERVER_PORT:-9009}"
DIR="$STATE_DIR/clickhouse-$CH_NAME"
PID_FILE="$DIR/server.pid"

install() {
  if command -v clickhouse-server >/dev/null 2>&1 && command -v clickhouse-client >/dev/null 2>&1; then
    note "clickhouse-server already installed"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "installing ClickHouse needs root: sudo apt-get install -y clickhouse-server clickhouse-client"
  need apt-get "This script installs ClickHouse from Debian/Ubuntu packages."
  step "installing clickhouse-server and clickhouse-client (apt)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null \
    || die "apt-get install clickhouse-server clickhouse-client failed"
}

configure() {
  [ -f /etc/clickhouse-server/config.xml ] || die "/etc/clickhouse-server/config.xml is missing; reinstall clickhouse-server"
  mkdir -p "$DIR/data" "$DIR/log"
  # The packaged config with this instance's paths and ports; users.xml as packaged.
  sed -e "s#/var/lib/clickhouse/#$DIR/data/#g" \
      -e "s#/var/log/clickhouse-server/#$DIR/log/#g" \
      -e "s#<http_port>[0-9]*</http_port>#<http_port>$CH_HTTP_PORT</http_port>#" \
      -e "s#<tcp_port>[0-9]*</tcp_port>#<tcp_port>$CH_TCP_PORT</tcp_port>#" \
      -e "s#<interserver_http_port>[0-9]*</interserver_http_port>#<interserver_http_port>$CH_INTERSERVER_PORT</interserver_http_port>#" \
      /etc/clickhouse-server/config.xml >"$DIR/config.xml"
  cp /etc/clickhouse-server/users.xml "$DIR/users.xml"
}

start() {
  if pid_alive "$PID_FILE" && [ "$(http_status "$CH_HTTP_PORT" /ping)" = 200 ]; then
    note "ClickHouse '$CH_NAME' already running on 127.0.0.1:$CH_HTTP_PORT (pid $(cat "$PID_FILE"))"
    return 0
  fi
  port_open 127.0.0.1 "$CH_HTTP_PORT" && die "port $CH_HTTP_PORT is taken by another process; set CH_HTTP_PORT"
  install
  configure
  step "starting ClickHouse '$CH_NAME' on 127.0.0.1:$CH_HTTP_PORT (data in $DIR/data)"
  (cd "$DIR" && exec nohup clickhouse-server --config-file="$DIR/config.xml" >>"$DIR/log/stdout.log" 2>&1) &
  echo $! >"$PID_FILE"
  for _ in $(seq 1 150); do
    [ "$(http_status "$CH_HTTP_PORT" /ping)" = 200 ] && { note "ClickHouse up (pid $(cat "$PID_FILE"))"; return 0; }
    pid_alive "$PID_FILE" || break
    sleep 0.2
  done
  tail -n 20 "$DIR/log/clickhouse-server.err.log" "$DIR/log/stdout.log" >&2 2>/dev/null || true
  die "ClickHouse did not answer on 127.0.0.1:$CH_HTTP_PORT within 30 s"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) step "stopping ClickHouse '$CH_NAME'"; stop_pid "$PID_FILE" "ClickHouse '$CH_NAME'" ;;
  status)
    if pid_alive "$PID_FILE" && [ "$(http_status "$CH_HTTP_PORT" /ping)" = 200 ]; then
      echo "running on 127.0.0.1:$CH_HTTP_PORT (pid $(cat "$PID_FILE"))"
    else
      echo "not running"; exit 1
    fi ;;
  *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
