#!/usr/bin/env bash
# Measures the running edge with wrk: starts a release pixelpipe-ingest with the given runtime
# layout against the local broker, runs wrk against one pixel URL, stops the edge, and prints one
# line: layout, threads, requests/s and latency percentiles.
#   bench/scripts/wrk-edge.sh [multi_thread|per_core] [HTTP_THREADS] [SECONDS] [CONNECTIONS]
# Needs: wrk (apt-get install wrk), the broker (deploy/local/kafka.sh start), a release build
# (cargo build --release -p pixelpipe-ingest).
source "$(dirname "${BASH_SOURCE[0]}")/../../deploy/local/lib.sh"

LAYOUT=${1:-multi_thread} THREADS=${2:-2} SECONDS_=${3:-10} CONNS=${4:-64}
PORT=18080 ADMIN=19090 TOPIC=bench.wrk
need wrk "apt-get install -y wrk"
BIN="$ROOT/target/release/pixelpipe-ingest"
[ -x "$BIN" ] || die "build first: cargo build --release -p pixelpipe-ingest"
"$ROOT/deploy/local/kafka.sh" topic "$TOPIC" 4 2>/dev/null

PIXELPIPE_LOG=warn,pixelpipe_ingest=info "$BIN" --listen-addr "127.0.0.1:$PORT" --admin-addr "127.0.0.1:$ADMIN" \
  --brokers "$KAFKA_ADDR" --topic "$TOPIC" --set "spool.dir=$STATE_DIR/spool-wrk-edge" \
  --set "http.runtime_layout=$LAYOUT" --set "http.worker_threads=$THREADS" ${EXTRA_SETTINGS:-} \
  >"$STATE_DIR/wrk-edge.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [ "$(http_status $PORT /healthz)" = 200 ] && break; sleep 0.1; done
[ "$(http_status $PORT /healthz)" = 200 ] || die "edge not serving; see $STATE_DIR/wrk-edge.log"
# Ready means connected to the broker; a run against no broker (EXTRA_SETTINGS) never is.
for _ in $(seq 1 50); do [ "$(http_status $PORT /readyz)" = 200 ] && break; sleep 0.2; done

URL="http://127.0.0.1:$PORT/p.gif?site=bench.example&e=pageview&url=https%3A%2F%2Fbench.example%2Fa&campaign=spring&variant=B"
out=$(wrk -t1 -c"$CONNS" -d"${SECONDS_}s" --latency "$URL")
rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
p50=$(awk '$1=="50%" {print $2}' <<<"$out")
p99=$(awk '$1=="99%" {print $2}' <<<"$out")
errors=$(grep -E "Non-2xx|Socket errors" <<<"$out" | tr -s ' ' | paste -sd';' - || true)
# Stop the edge (drain and flush) and take its own final report.
kill -TERM $pid; wait $pid 2>/dev/null || true; trap - EXIT
report=$(grep -a "edge stopped" "$STATE_DIR/wrk-edge.log" | tail -n 1 | grep -oE '(accepted|delivered|dropped)=[0-9]+' | paste -sd' ' - || true)
printf '%-12s threads=%s conns=%s req/s=%s p50=%s p99=%s %s %s\n' \
  "$LAYOUT" "$THREADS" "$CONNS" "$rps" "$p50" "$p99" "$report" "$errors"
