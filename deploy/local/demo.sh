#!/usr/bin/env bash
# Runs the whole pipeline locally with sample traffic and ends with a real query result:
# broker + ClickHouse -> edge -> sample pixel and beacon requests -> Kafka -> sink -> ClickHouse.
# Leaves the broker (with its PostgreSQL) and ClickHouse running (kafka.sh stop-all, clickhouse.sh
# stop); stops what it started itself (the edge and the sink).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REQUESTS="${REQUESTS:-200}"            # 200 requests carry 220 hits (every tenth is a 2-hit beacon)
HITS=$((REQUESTS + REQUESTS / 10))
TOPIC="pixelpipe.hits"
RUN="demo-$(date +%s)"                 # this run's edge_id, so the query counts this run only
EDGE_PORT=8080 EDGE_ADMIN=9090 SINK_ADMIN=9091
EDGE_PID="$STATE_DIR/ingest.pid" EDGE_LOG="$STATE_DIR/ingest.log"
SINK_PID="$STATE_DIR/sink.pid" SINK_LOG="$STATE_DIR/sink.log"

need cargo "Install Rust first (https://rustup.rs)."
"$ROOT/deploy/local/kafka.sh" start
"$ROOT/deploy/local/kafka.sh" topic "$TOPIC" 4
"$ROOT/deploy/local/kafka.sh" topic "$TOPIC.dlq" 1
"$ROOT/deploy/local/clickhouse.sh" start

step "building the edge, the sink and the load generator (release)"
(cd "$ROOT" && cargo build --release --locked -p pixelpipe-ingest -p pixelpipe-sink -p pixelpipe-bench --bins)
BIN="$ROOT/target/release"

stop_all() { stop_pid "$EDGE_PID" edge; stop_pid "$SINK_PID" sink; }
stop_pid "$EDGE_PID" "previous demo edge" 2>/dev/null
stop_pid "$SINK_PID" "previous demo sink" 2>/dev/null
for port in "$EDGE_PORT" "$EDGE_ADMIN" "$SINK_ADMIN"; do
  port_open 127.0.0.1 "$port" && die "port $port is taken by another process"
done
trap stop_all EXIT
export PIXELPIPE_LOG="${PIXELPIPE_LOG:-info,librdkafka=warn}"

step "starting the sink (migrates the schema; metrics on 127.0.0.1:$SINK_ADMIN/metrics)"
nohup "$BIN/pixelpipe-sink" --set "kafka.brokers=$KAFKA_ADDR" --set "kafka.topic=$TOPIC" \
  --set "admin.listen_addr=127.0.0.1:$SINK_ADMIN" >"$SINK_LOG" 2>&1 &
echo $! >"$SINK_PID"

step "starting the edge on 127.0.0.1:$EDGE_PORT (metrics on 127.0.0.1:$EDGE_ADMIN/metrics)"
nohup "$BIN/pixelpipe-ingest" --config "$ROOT/deploy/local/ingest.toml" --brokers "$KAFKA_ADDR" --topic "$TOPIC" \
  --set "edge_id=$RUN" --set "spool.dir=$STATE_DIR/spool-demo-edge" >"$EDGE_LOG" 2>&1 &
echo $! >"$EDGE_PID"
for _ in $(seq 1 150); do
  [ "$(http_status "$EDGE_PORT" /readyz)" = 200 ] && break
  pid_alive "$EDGE_PID" || { cat "$EDGE_LOG" >&2; die "the edge exited; log above"; }
  sleep 0.2
done
[ "$(http_status "$EDGE_PORT" /readyz)" = 200 ] || die "the edge did not become ready in 30 s; log: $EDGE_LOG"
note "ready"

step "sending $REQUESTS sample requests ($HITS hits: page views, email opens, ad impressions, conversions, beacons)"
"$BIN/pixelpipe-loadgen" --addr "127.0.0.1:$EDGE_PORT" --requests "$REQUESTS"

step "waiting for the sink to store all $HITS hits in ClickHouse"
stored=0
for _ in $(seq 1 120); do
  stored=$(clickhouse-client -q "SELECT uniqExact(event_id) FROM pixelpipe.hits WHERE edge_id = '$RUN'" 2>/dev/null || echo 0)
  [ "$stored" = "$HITS" ] && break
  pid_alive "$SINK_PID" || { tail -n 30 "$SINK_LOG" >&2; die "the sink exited; log above"; }
  sleep 0.5
done
[ "$stored" = "$HITS" ] || die "only $stored of $HITS hits stored after 60 s; sink log: $SINK_LOG"

step "hits by kind and campaign (clickhouse-client, table pixelpipe.hits)"
clickhouse-client --format PrettyCompactNoEscapes -q "
  SELECT kind, campaign, count() AS hits, uniqExact(site_id) AS sites, round(sum(ifNull(value, 0)), 2) AS value
  FROM pixelpipe.hits FINAL
  WHERE edge_id = '$RUN'
  GROUP BY kind, campaign
  ORDER BY kind, campaign"

step "who fetched them: traffic class, device and browser (added by the sink)"
clickhouse-client --format PrettyCompactNoEscapes -q "
  SELECT traffic_class, class_reason, device_type, browser, count() AS hits
  FROM pixelpipe.hits FINAL
  WHERE edge_id = '$RUN'
  GROUP BY traffic_class, class_reason, device_type, browser
  ORDER BY hits DESC"

step "stopping the edge and the sink (SIGTERM: drain, flush, commit)"
trap - EXIT
stop_all
grep -a "edge stopped" "$EDGE_LOG" | tail -n 1 | sed 's/^/    /' >&2
note "broker, its PostgreSQL and ClickHouse left running: deploy/local/kafka.sh stop-all; deploy/local/clickhouse.sh stop"
note "query more: clickhouse-client, then see docs/analytics.md"
