#!/usr/bin/env bash
# Runs the pipeline locally with sample traffic and shows the hits arriving:
# broker -> edge -> sample pixel and beacon requests -> hits read back from the topic.
# Leaves the broker running (deploy/local/kafka.sh stop); stops the edge it started.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REQUESTS="${REQUESTS:-200}"            # 200 requests carry 220 hits (every tenth is a 2-hit beacon)
HITS=$((REQUESTS + REQUESTS / 10))
TOPIC="pixelpipe.demo.$(date +%s)"     # a fresh topic per run, so the read-back counts this run only
EDGE_PORT=8080 ADMIN_PORT=9090
EDGE_PID="$STATE_DIR/ingest.pid" EDGE_LOG="$STATE_DIR/ingest.log"

need cargo "Install Rust first (https://rustup.rs)."
"$ROOT/deploy/local/kafka.sh" start
"$ROOT/deploy/local/kafka.sh" topic "$TOPIC" 4

step "building the edge, the load generator and the topic reader (release)"
(cd "$ROOT" && cargo build --release --locked -p pixelpipe-ingest -p pixelpipe-bench --bins --example tail)
BIN="$ROOT/target/release"

stop_pid "$EDGE_PID" "previous demo edge" 2>/dev/null
port_open 127.0.0.1 "$EDGE_PORT" && die "port $EDGE_PORT is taken by another process"
step "starting the edge on 127.0.0.1:$EDGE_PORT (metrics on 127.0.0.1:$ADMIN_PORT/metrics)"
PIXELPIPE_LOG="${PIXELPIPE_LOG:-info,librdkafka=warn}" nohup "$BIN/pixelpipe-ingest" \
  --config "$ROOT/deploy/local/ingest.toml" --brokers "$KAFKA_ADDR" --topic "$TOPIC" \
  >"$EDGE_LOG" 2>&1 &
echo $! >"$EDGE_PID"
trap 'stop_pid "$EDGE_PID" edge' EXIT
for _ in $(seq 1 150); do
  [ "$(http_status "$EDGE_PORT" /readyz)" = 200 ] && break
  pid_alive "$EDGE_PID" || { cat "$EDGE_LOG" >&2; die "the edge exited; log above"; }
  sleep 0.2
done
[ "$(http_status "$EDGE_PORT" /readyz)" = 200 ] || die "the edge did not become ready in 30 s; log: $EDGE_LOG"
note "ready"

step "sending $REQUESTS sample requests ($HITS hits: page views, email opens, ad impressions, conversions, beacons)"
"$BIN/pixelpipe-loadgen" --addr "127.0.0.1:$EDGE_PORT" --requests "$REQUESTS"

step "reading the hits back from topic $TOPIC"
"$BIN/examples/tail" --brokers "$KAFKA_ADDR" --topic "$TOPIC" --count "$HITS" --show 1

step "stopping the edge (SIGTERM: drain, flush, report)"
trap - EXIT
stop_pid "$EDGE_PID" edge
grep -a "edge stopped" "$EDGE_LOG" | tail -n 1 | sed 's/^/    /' >&2
note "broker left running: deploy/local/kafka.sh stop"
