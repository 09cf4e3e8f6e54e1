#!/usr/bin/env bash
# A replicated ClickHouse cluster on this machine: ZooKeeper plus two ClickHouse servers forming
# one shard with two replicas (cluster `pixelpipe`), with their data under this checkout.
#   clickhouse-cluster.sh install              apt-get install zookeeper (and ClickHouse; needs root)
#   clickhouse-cluster.sh start                install if needed, start all three, wait for each
#   clickhouse-cluster.sh stop | status
#   clickhouse-cluster.sh stop-replica N       stop replica N (1 or 2) alone, e.g. to test catch-up
#   clickhouse-cluster.sh start-replica N
# Ports: ZooKeeper 127.0.0.1:12181; replica N answers HTTP on 8123+N, native TCP on 9100+N and
# interserver HTTP on 9200+N. The sink uses it with `clickhouse.cluster = "pixelpipe"` and
# `clickhouse.url = "http://127.0.0.1:8124"` (docs/operations-sink.md, "A replicated ClickHouse
# cluster"). ZooKeeper's own output goes where Debian's /etc/zookeeper/conf/environment says
# (/var/log/zookeeper), which overrides any other setting.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=pixelpipe
ZK_PORT="${PIXELPIPE_ZK_PORT:-12181}"
ZK_DIR="$STATE_DIR/zookeeper"
ZK_BIN="${ZK_BIN:-/usr/share/zookeeper/bin/zkServer.sh}"
REPLICAS=(1 2)

http_port() { echo $((8123 + $1)); }
tcp_port() { echo $((9100 + $1)); }
interserver_port() { echo $((9200 + $1)); }

install() {
  "$ROOT/deploy/local/clickhouse.sh" install
  # It brings a Java runtime.
  apt_tool zookeeper "$ZK_BIN" ZK_BIN
}

# Serving, not only alive: `ruok` answers imok while ZooKeeper still loads its data and refuses
# sessions (ClickHouse then fails at start with "Connection loss"); `stat` names a Mode only when
# it serves.
zk_ok() { timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$ZK_PORT && printf stat >&3 && grep -q '^Mode: ' <&3" 2>/dev/null; }

start_zookeeper() {
  if zk_ok; then
    note "ZooKeeper already running on 127.0.0.1:$ZK_PORT"
    return 0
  fi
  port_open 127.0.0.1 "$ZK_PORT" && die "port $ZK_PORT is taken by another process; set PIXELPIPE_ZK_PORT"
  mkdir -p "$ZK_DIR/data" "$ZK_DIR/log"
  cat >"$ZK_DIR/zoo.cfg" <<EOF
tickTime=2000
initLimit=10
syncLimit=5
dataDir=$ZK_DIR/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,stat
EOF
  step "starting ZooKeeper on 127.0.0.1:$ZK_PORT (data in $ZK_DIR/data)"
  ZOOPIDFILE="$ZK_DIR/zookeeper.pid" \
    "$ZK_BIN" start "$ZK_DIR/zoo.cfg" >>"$ZK_DIR/log/start.log" 2>&1 \
    || { tail -n 20 "$ZK_DIR/log/start.log" >&2; die "ZooKeeper did not start"; }
  for _ in $(seq 1 150); do
    zk_ok && { note "ZooKeeper up (pid $(cat "$ZK_DIR/zookeeper.pid"))"; return 0; }
    sleep 0.2
  done
  tail -n 20 /var/log/zookeeper/*.out "$ZK_DIR/log/start.log" >&2 2>/dev/null || true
  die "ZooKeeper did not answer on 127.0.0.1:$ZK_PORT within 30 s"
}

# The cluster's part of replica N's configuration, beside the packaged config clickhouse.sh writes.
configure_replica() {
  local n=$1 dir="$STATE_DIR/clickhouse-replica$1" replicas=""
  for r in "${REPLICAS[@]}"; do
    replicas+="<replica><host>127.0.0.1</host><port>$(tcp_port "$r")</port></replica>"
  done
  mkdir -p "$dir/config.d"
  cat >"$dir/config.d/cluster.xml" <<EOF
<yandex>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <zookeeper><node><host>127.0.0.1</host><port>$ZK_PORT</port></node></zookeeper>
  <remote_servers>
    <$CLUSTER><shard><internal_replication>true</internal_replication>$replicas</shard></$CLUSTER>
  </remote_servers>
  <macros><shard>01</shard><replica>replica$n</replica></macros>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
</yandex>
EOF
}

replica() { # start|stop|status N
  local n=$2
  [[ " ${REPLICAS[*]} " == *" $n "* ]] || die "replica must be one of ${REPLICAS[*]}, not '$n'"
  [ "$1" = start ] && configure_replica "$n"
  CH_NAME="replica$n" CH_HTTP_PORT="$(http_port "$n")" CH_TCP_PORT="$(tcp_port "$n")" \
    CH_INTERSERVER_PORT="$(interserver_port "$n")" "$ROOT/deploy/local/clickhouse.sh" "$1"
}

case "${1:-}" in
  install) install ;;
  start)
    install
    start_zookeeper
    for n in "${REPLICAS[@]}"; do replica start "$n"; done
    ;;
  stop)
    for n in "${REPLICAS[@]}"; do replica stop "$n"; done
    step "stopping ZooKeeper"
    stop_pid "$ZK_DIR/zookeeper.pid" ZooKeeper
    ;;
  status) # exits 1 unless all three run
    all=0
    if zk_ok; then echo "zookeeper: running on 127.0.0.1:$ZK_PORT"; else echo "zookeeper: not running"; all=1; fi
    for n in "${REPLICAS[@]}"; do printf 'replica%s: ' "$n"; replica status "$n" || all=1; done
    exit "$all"
    ;;
  start-replica) replica start "${2:-}" ;;
  stop-replica) replica stop "${2:-}" ;;
  *) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
