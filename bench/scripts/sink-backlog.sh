#!/usr/bin/env bash
# Measures the sink draining a backlog: fills a fresh topic through the edge with the sample mix,
# then starts the sink and times how long ClickHouse takes to hold every hit.
#   bench/scripts/sink-backlog.sh [REQUESTS]       (default 100000 requests = 110000 hits)
# SINK_BIN=path runs another sink binary (to compare two builds side by side); EDGE_SETTINGS adds
# settings to the edge that fills the topic (e.g. "--set kafka.pack_max_bytes=0": one hit per
# message). Prints the drain rate and the CPU seconds the broker (tansu and its PostgreSQL), the
# sink and ClickHouse used during the drain, from /proc.
# Needs release builds (cargo build --release -p pixelpipe-ingest -p pixelpipe-sink -p pixelpipe-bench)
# and starts the local broker and ClickHouse if they are not running.
source "$(dirname "${BASH_SOURCE[0]}")/../../deploy/local/lib.sh"

REQUESTS=${1:-100000}
HITS=$((REQUESTS + REQUESTS / 10))
RUN="bench_$(date +%s)"
TOPIC="bench.sink.$RUN"
BIN="$ROOT/target/release"
for b in pixelpipe-ingest pixelpipe-sink pixelpipe-loadgen; do
  [ -x "$BIN/$b" ] || die "build first: cargo build --release -p pixelpipe-ingest -p pixelpipe-sink -p pixelpipe-bench"
done
"$ROOT/deploy/local/kafka.sh" start >/dev/null 2>&1
"$ROOT/deploy/local/clickhouse.sh" start >/dev/null 2>&1
"$ROOT/deploy/local/kafka.sh" topic "$TOPIC" 4 2>/dev/null
"$ROOT/deploy/local/kafka.sh" topic "$TOPIC.dlq" 1 2>/dev/null

step "filling $TOPIC with $HITS hits through the edge"
PIXELPIPE_LOG=warn,pixelpipe_ingest=info "$BIN/pixelpipe-ingest" --listen-addr 127.0.0.1:18080 \
  --admin-addr 127.0.0.1:19090 --brokers "$KAFKA_ADDR" --topic "$TOPIC" \
  --set "spool.dir=$STATE_DIR/spool-bench-edge" --set kafka.flush_timeout_ms=600000 ${EDGE_SETTINGS:-} >"$STATE_DIR/bench-edge.log" 2>&1 &
edge=$!
for _ in $(seq 1 100); do [ "$(http_status 18080 /readyz)" = 200 ] && break; sleep 0.1; done
"$BIN/pixelpipe-loadgen" --addr 127.0.0.1:18080 --requests "$REQUESTS" --connections 8 >/dev/null
kill -TERM $edge; wait $edge || true
report=$(grep -a "edge stopped" "$STATE_DIR/bench-edge.log" | tail -1)
grep -oE '(accepted|delivered|dropped|spooled)=[0-9]+' <<<"$report" | paste -sd' ' - | sed 's/^/    edge: /' >&2
# What Kafka has is what the sink can drain (anything spooled waits for the edge's next start).
HITS=$(grep -oE 'delivered=[0-9]+' <<<"$report" | cut -d= -f2)

# cpu_s PID...: user + system CPU seconds of the processes (and their threads), summed.
cpu_s() { local t=0 p; for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; awk -v t=$t -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}'; }
broker_pids=$(echo $(cat "$STATE_DIR/tansu.pid" 2>/dev/null) $(pgrep -f "postgres.*$STATE_DIR/postgres" || pgrep -u postgres postgres || true))
clickhouse_pids=$(pgrep -f clickhouse-server | tr '\n' ' ')

step "draining it with one sink into ClickHouse 18.16"
broker_before=$(cpu_s $broker_pids) clickhouse_before=$(cpu_s $clickhouse_pids)
start=$(date +%s.%N)
PIXELPIPE_LOG=${SINK_LOG:-warn} "${SINK_BIN:-$BIN/pixelpipe-sink}" --set "kafka.brokers=$KAFKA_ADDR" --set "kafka.topic=$TOPIC" \
  --set "clickhouse.table_prefix=${RUN}_" --set admin.listen_addr=127.0.0.1:19091 >"$STATE_DIR/bench-sink.log" 2>&1 &
sink=$!
stored=0
while [ "$stored" != "$HITS" ]; do
  sleep 0.2
  stored=$(clickhouse-client -q "SELECT count() FROM pixelpipe.${RUN}_hits" 2>/dev/null || echo 0)
  kill -0 $sink 2>/dev/null || die "the sink exited; see $STATE_DIR/bench-sink.log"
done
end=$(date +%s.%N)
sink_cpu=$(cpu_s $sink) broker_after=$(cpu_s $broker_pids) clickhouse_after=$(cpu_s $clickhouse_pids)
kill -TERM $sink; wait $sink || true
awk -v s="$start" -v e="$end" -v n="$HITS" 'BEGIN { printf "sink: %d hits stored in %.2f s (%.0f hits/s, from sink start incl. migration and group join)\n", n, e - s, n / (e - s) }'
awk -v b="$(awk -v a="$broker_after" -v b="$broker_before" 'BEGIN {print a - b}')" -v c="$(awk -v a="$clickhouse_after" -v b="$clickhouse_before" 'BEGIN {print a - b}')" -v k="$sink_cpu" \
  'BEGIN { printf "cpu during the drain: broker %.2f s, sink %.2f s, clickhouse %.2f s\n", b, k, c }'
clickhouse-client -q "DROP TABLE IF EXISTS pixelpipe.${RUN}_hits"
clickhouse-client -q "DROP TABLE IF EXISTS pixelpipe.${RUN}_bad_hits"
clickhouse-client -q "DROP TABLE IF EXISTS pixelpipe.${RUN}_schema_migrations"
