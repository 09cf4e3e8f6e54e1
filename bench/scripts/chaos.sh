#!/usr/bin/env bash
# The chaos suite: distinct, numbered hits sent at a fixed rate through real edges, the local
# broker, real sinks and ClickHouse, while a fault is injected at about 10 %, 50 % and 90 % of
# the run; then it waits for the pipeline to catch up and counts, exactly, what was stored.
#
#   bench/scripts/chaos.sh                    every scenario (about 15 minutes)
#   bench/scripts/chaos.sh broker-kill ...    the named scenarios
#   bench/scripts/chaos.sh --short            CI's form: one broker restart, 3000 hits
#
# Scenarios:
#   broker-restart   the broker stopped for OUTAGE_S, then started
#   broker-kill      the broker killed with SIGKILL, then started after 5 s
#   sink-kill        the sink killed with SIGKILL mid-batch, then started
#   clickhouse-stop  ClickHouse stopped for OUTAGE_S, then started
#   edge-term        the edge sent SIGTERM under load (graceful), then started on its spool
#   edge-kill-disk   the edge killed with SIGKILL under durability = "disk", then started
#   group-kill       two edges and two sinks in one group; one of each killed, then started
#
# Pass: missing 0 and duplicates 0. edge-kill-disk reports its loss (what was in the channel;
# docs/reliability.md) and passes when it is within one fsync interval of traffic
# (RATE x FSYNC_INTERVAL_MS). group-kill's killed edge runs durability = "memory": what it held in
# memory is reported as missing, and the scenario passes when the loss is within what that edge
# could hold (its share of RATE x MESSAGE_TIMEOUT_MS). Exit status 1 when a scenario failed.
# The edges run with kafka.message_timeout_ms = MESSAGE_TIMEOUT_MS (5000; --short 2000), shorter
# than the outages, so hits Kafka fails during an outage go through the spool and replay; and with
# kafka.enable_idempotence = false, because tansu 0.6.0 refuses every later batch of a partition
# once librdkafka bumps the idempotent producer's epoch after a timed-out message (KIP-360; see
# docs/reliability.md). A retry may then write a hit twice to Kafka; it keeps its event_id, and
# the duplicates column counts what the exact-count query would see.
# Settings (environment): HITS (default 20000), RATE hits/s (250), OUTAGE_S (20),
# CATCH_UP_S (240), MESSAGE_TIMEOUT_MS, BIN_DIR (target/release; build with
# cargo build --release -p pixelpipe-ingest -p pixelpipe-sink -p pixelpipe-bench --bins).
source "$(dirname "${BASH_SOURCE[0]}")/../../deploy/local/lib.sh"

SHORT=0
SCENARIOS=()
for a in "$@"; do
  case "$a" in
    --short) SHORT=1 ;;
    broker-restart|broker-kill|sink-kill|clickhouse-stop|edge-term|edge-kill-disk|group-kill) SCENARIOS+=("$a") ;;
    *) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//' >&2; die "unknown argument: $a" ;;
  esac
done
if [ "$SHORT" = 1 ]; then
  HITS=${HITS:-3000} RATE=${RATE:-150} OUTAGE_S=${OUTAGE_S:-5} MESSAGE_TIMEOUT_MS=${MESSAGE_TIMEOUT_MS:-2000}
  [ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(broker-restart)
fi
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(broker-restart broker-kill sink-kill clickhouse-stop edge-term edge-kill-disk group-kill)
HITS=${HITS:-20000} RATE=${RATE:-250} OUTAGE_S=${OUTAGE_S:-20} CATCH_UP_S=${CATCH_UP_S:-240}
MESSAGE_TIMEOUT_MS=${MESSAGE_TIMEOUT_MS:-5000}
# The sinks' consumer-group session. tansu 0.6 does not rebalance when a dead member's session
# runs out, and a member that joins before then can be left with no partitions: a killed sink is
# started again only after the session has expired, as a restarted process usually is.
SESSION_TIMEOUT_S=6
FSYNC_INTERVAL_MS=200
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
for port in 18181 18182 19181 19182 19191 19192; do
  port_open 127.0.0.1 "$port" && die "port $port is taken (a previous run still going?); the suite needs 18181-18182 and 19181-19192"
done
for b in pixelpipe-ingest pixelpipe-sink pixelpipe-chaosload; do
  [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing; build first: cargo build --release -p pixelpipe-ingest -p pixelpipe-sink -p pixelpipe-bench --bins"
done
need clickhouse-client "deploy/local/clickhouse.sh install"
"$ROOT/deploy/local/kafka.sh" start
"$ROOT/deploy/local/clickhouse.sh" start

WORK="$STATE_DIR/chaos"
mkdir -p "$WORK"
EDGE_PORTS=(18181 18182) EDGE_ADMIN=(19181 19182) SINK_ADMIN=(19191 19192)
declare -A PIDS

ch() { clickhouse-client -q "$1" 2>/dev/null; }

# Whatever happens, the edges, sinks and load generator this script started do not outlive it.
cleanup() {
  local pid
  for pid in "${PIDS[@]}" ${load:-}; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

start_edge() { # INDEX DURABILITY
  local i=$1
  PIXELPIPE_LOG=warn,pixelpipe_ingest=info "$BIN_DIR/pixelpipe-ingest" \
    --listen-addr "127.0.0.1:${EDGE_PORTS[$i]}" --admin-addr "127.0.0.1:${EDGE_ADMIN[$i]}" \
    --brokers "$KAFKA_ADDR" --topic "$TOPIC" --set "edge_id=$RUN-edge$i" \
    --set "spool.dir=$WORK/$RUN/spool-$i" --set "spool.durability=$2" \
    --set "spool.fsync_interval_ms=$FSYNC_INTERVAL_MS" --set "kafka.message_timeout_ms=$MESSAGE_TIMEOUT_MS" \
    --set kafka.enable_idempotence=false >>"$WORK/$RUN/edge$i.log" 2>&1 &
  PIDS[edge$i]=$!
  for _ in $(seq 1 150); do
    kill -0 "${PIDS[edge$i]}" 2>/dev/null || die "edge $i exited; see $WORK/$RUN/edge$i.log"
    [ "$(http_status "${EDGE_PORTS[$i]}" /healthz)" = 200 ] && return 0
    sleep 0.1
  done
  die "edge $i did not start; see $WORK/$RUN/edge$i.log"
}

start_sink() { # INDEX
  local i=$1
  PIXELPIPE_LOG=warn,pixelpipe_sink=info "$BIN_DIR/pixelpipe-sink" --set "kafka.brokers=$KAFKA_ADDR" \
    --set "kafka.topic=$TOPIC" --set "kafka.group_id=$RUN" --set "clickhouse.table_prefix=${RUN}_" \
    --set "admin.listen_addr=127.0.0.1:${SINK_ADMIN[$i]}" \
    --set "kafka.properties.session.timeout.ms=$((SESSION_TIMEOUT_S * 1000))" >>"$WORK/$RUN/sink$i.log" 2>&1 &
  PIDS[sink$i]=$!
  sleep 0.5
  kill -0 "${PIDS[sink$i]}" 2>/dev/null || die "sink $i exited; see $WORK/$RUN/sink$i.log"
}

# stop NAME SIGNAL: signals a process this script started and waits for it to exit.
stop() {
  local pid=${PIDS[$1]:-}
  [ -n "$pid" ] || return 0
  kill "-$2" "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "PIDS[$1]"
}

# One fault, its recovery included.
fault() {
  case "$SCENARIO" in
    broker-restart) "$ROOT/deploy/local/kafka.sh" stop; sleep "$OUTAGE_S"; "$ROOT/deploy/local/kafka.sh" start ;;
    broker-kill) "$ROOT/deploy/local/kafka.sh" kill; sleep 5; "$ROOT/deploy/local/kafka.sh" start ;;
    sink-kill) stop sink0 KILL; sleep $((SESSION_TIMEOUT_S + 2)); start_sink 0 ;;
    clickhouse-stop) "$ROOT/deploy/local/clickhouse.sh" stop; sleep "$OUTAGE_S"; "$ROOT/deploy/local/clickhouse.sh" start ;;
    edge-term) stop edge0 TERM; start_edge 0 memory ;;
    edge-kill-disk) stop edge0 KILL; start_edge 0 disk ;;
    group-kill) stop edge1 KILL; stop sink1 KILL; sleep $((SESSION_TIMEOUT_S + 2)); start_edge 1 memory; start_sink 1 ;;
  esac >>"$WORK/$RUN/faults.log" 2>&1
}

# metric PORT NAME: a counter's value from an edge's /metrics (0 when unreachable).
metric() {
  local v
  v=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
    awk -v n="$2" '$1 == n { print int($2) }' <&3) 2>/dev/null) || true
  echo "${v:-0}"
}

# stored_counts: "ANSWERED_STORED DISTINCT_STORED ROWS" for this run's table: answered hits
# stored (distinct), all hits stored (distinct), and rows by the exact-count query
# (docs/analytics.md: count() ... FINAL). ROWS above DISTINCT_STORED is a duplicate.
stored_counts() {
  local unanswered
  unanswered=$(paste -sd, "$WORK/$RUN/unanswered" 2>/dev/null || true)
  ch "SELECT uniqExactIf(n, n NOT IN (${unanswered:-18446744073709551615})), uniqExact(n),
        (SELECT count() FROM pixelpipe.${RUN}_hits FINAL)
      FROM (SELECT toUInt64(prop_values[indexOf(prop_keys, 'n')]) AS n FROM pixelpipe.${RUN}_hits)" | tr '\t' ' '
}

RESULTS=()
FAILED=0
for SCENARIO in "${SCENARIOS[@]}"; do
  RUN="chaos_$(date +%s)_${SCENARIO//-/_}"
  TOPIC="chaos.$RUN"
  mkdir -p "$WORK/$RUN"
  step "$SCENARIO: $HITS hits at $RATE/s, faults at 10/50/90 % (logs: $WORK/$RUN)"
  "$ROOT/deploy/local/kafka.sh" topic "$TOPIC" 4 2>/dev/null
  "$ROOT/deploy/local/kafka.sh" topic "$TOPIC.dlq" 1 2>/dev/null
  durability=memory; [ "$SCENARIO" = edge-kill-disk ] && durability=disk
  edges=1; sinks=1; [ "$SCENARIO" = group-kill ] && edges=2 sinks=2
  for ((i = 0; i < sinks; i++)); do start_sink $i; done
  for ((i = 0; i < edges; i++)); do start_edge $i "$durability"; done
  for ((i = 0; i < edges; i++)); do
    for _ in $(seq 1 150); do [ "$(http_status "${EDGE_PORTS[$i]}" /readyz)" = 200 ] && break; sleep 0.2; done
  done
  addrs=()
  for ((i = 0; i < edges; i++)); do addrs+=(--addr "127.0.0.1:${EDGE_PORTS[$i]}"); done

  "$BIN_DIR/pixelpipe-chaosload" "${addrs[@]}" --hits "$HITS" --rate "$RATE" --run "$RUN" \
    --unanswered-out "$WORK/$RUN/unanswered" >"$WORK/$RUN/load.out" 2>&1 &
  load=$!
  started=$SECONDS
  duration=$(( (HITS + RATE - 1) / RATE ))
  points=(10 50 90); [ "$SHORT" = 1 ] && points=(50)
  for p in "${points[@]}"; do
    at=$((started + duration * p / 100))
    while [ "$SECONDS" -lt "$at" ]; do sleep 0.2; done
    note "fault at $p % ($((SECONDS - started)) s)"
    fault
  done
  wait $load || die "the load generator failed; see $WORK/$RUN/load.out"
  answered=$(sed -nE 's/.* answered=([0-9]+) .*/\1/p' "$WORK/$RUN/load.out")
  [ -n "$answered" ] || die "no result from the load generator; see $WORK/$RUN/load.out"
  note "load done: $(cat "$WORK/$RUN/load.out")"

  # Catch up: until every answered hit is stored, or CATCH_UP_S passes.
  load_end=$SECONDS
  stored=0 distinct=0 rows=0
  while :; do
    read -r stored distinct rows <<<"$(stored_counts || echo "0 0 0")"
    [ "${stored:-0}" -ge "$answered" ] && break
    [ $((SECONDS - load_end)) -lt "$CATCH_UP_S" ] || break
    sleep 1
  done
  catch_up=$((SECONDS - load_end))
  sleep 2 # a duplicate written after the last missing row would show now
  read -r stored distinct rows <<<"$(stored_counts || echo "0 0 0")"
  replayed=0
  for ((i = 0; i < edges; i++)); do
    replayed=$((replayed + $(metric "${EDGE_ADMIN[$i]}" pixelpipe_ingest_spool_replayed_total)))
  done
  missing=$((answered - stored))
  duplicates=$((rows - distinct))
  case "$SCENARIO" in
    edge-kill-disk) allowed=$((RATE * FSYNC_INTERVAL_MS / 1000 * 3)) ;; # three kills
    group-kill) allowed=$((RATE * MESSAGE_TIMEOUT_MS / 1000 / 2 * 3)) ;;
    *) allowed=0 ;;
  esac
  verdict=pass
  if [ "$duplicates" -ne 0 ] || [ "$missing" -gt "$allowed" ]; then
    verdict=FAIL; FAILED=1
  elif [ "$missing" -gt 0 ]; then
    verdict="pass ($missing lost in memory, bound $allowed)"
  fi
  RESULTS+=("$(printf '| %s | %s | %s | %s | %s | %s | %s s | %s | %s |' \
    "$SCENARIO" "$HITS" "$answered" "$stored" "$missing" "$duplicates" "$catch_up" "$replayed" "$verdict")")

  for name in "${!PIDS[@]}"; do stop "$name" TERM; done
  if [ "$verdict" = pass ]; then
    ch "DROP TABLE IF EXISTS pixelpipe.${RUN}_hits"
    ch "DROP TABLE IF EXISTS pixelpipe.${RUN}_bad_hits"
    ch "DROP TABLE IF EXISTS pixelpipe.${RUN}_schema_migrations"
  fi
done

printf '\n| scenario | sent | answered 2xx | stored | missing | duplicates | catch-up | replayed from spool | result |\n'
printf '| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
printf '%s\n' "${RESULTS[@]}"
printf '\n%s, %s cores, %s; %s hits at %s/s, outages %s s\n' "$(date -u +%Y-%m-%d)" "$(nproc)" \
  "$(uname -m)" "$HITS" "$RATE" "$OUTAGE_S"
exit $FAILED
