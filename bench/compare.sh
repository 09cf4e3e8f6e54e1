#!/usr/bin/env bash
# The edge against nginx, side by side on one core: nginx `empty_gif` with a buffered access log,
# the floor of the project's HTTP stack (bench/examples/bare_hyper.rs: hyper answering the edge's
# own GIF and handing the query string to a crossbeam channel, nothing else), the edge writing
# hits to a file (output = "file"), and the edge producing to the local broker.
# Each server is pinned to CPU 0 (one worker / http.worker_threads=1; all the edge's threads),
# wrk -t1 to CPU 1 (the broker runs there too), the same pixel URL with six parameters. Rounds
# alternate the three, so drift on this shared machine hits all of them alike. Prints one table
# of medians: req/s, ratio to nginx, wrk's p50/p99, the server's CPU time per request (from
# /proc/<pid>/stat, so wrk's and the broker's CPU do not count) and its resident memory at the end.
# Then the same three at a fixed rate (pixelpipe-loadgen --rate, open loop, latency from each
# request's due time): CPU per request and latency where no server is saturated.
#
#   bench/compare.sh [ROUNDS] [SECONDS] [CONNECTIONS] [FIXED_RATE]    (defaults 3 8 64 20000)
#   SERVERS="nginx edge-file" bench/compare.sh ...                      (a subset; nginx first)
#
# Needs: root or sudo for apt-get when nginx or wrk are missing (installed from Debian), a release
# build (cargo build --release -p pixelpipe-ingest; built here if missing), the broker for the
# Kafka rows (deploy/local/kafka.sh start; started here if down).
source "$(dirname "${BASH_SOURCE[0]}")/../deploy/local/lib.sh"

ROUNDS=${1:-3} DURATION_S=${2:-8} CONNS=${3:-64} FIXED_RATE=${4:-20000}
PORT=18095 ADMIN=19095 TOPIC=bench.compare
WORK="$STATE_DIR/compare"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/pixelpipe-ingest"
LOADGEN="${CARGO_TARGET_DIR:-$ROOT/target}/release/pixelpipe-loadgen"
FLOOR="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/bare_hyper"
SERVERS=${SERVERS:-nginx hyper-floor edge-file edge-kafka}
URL_PATH="/p.gif?site=bench.example&e=pageview&url=https%3A%2F%2Fbench.example%2Fa&campaign=spring&variant=B&uid=u42"
TICKS=$(getconf CLK_TCK)

for tool in nginx:nginx-light wrk:wrk taskset:util-linux; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${tool%%:*}" ] || {
    step "installing ${tool#*:} from Debian"
    apt-get install -y "${tool#*:}" >/dev/null
  }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
step "building the edge and the load generator (release)"
cargo build --release --locked -p pixelpipe-ingest -p pixelpipe-bench --bins
# Separately: an example turns on the bench package's dev-dependency features, which must not
# reach the edge binary measured here.
cargo build --release --locked -p pixelpipe-bench --example bare_hyper
if [[ " $SERVERS " == *" edge-kafka "* ]]; then
  "$ROOT/deploy/local/kafka.sh" start
  "$ROOT/deploy/local/kafka.sh" topic "$TOPIC" 4 >/dev/null 2>&1 || true
fi
rm -rf "$WORK" && mkdir -p "$WORK/nginx/logs"

cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log $WORK/nginx/logs/access.log combined buffer=64k flush=1s;
  server {
    listen 127.0.0.1:$PORT reuseport backlog=4096;
    keepalive_requests 1000000;
    location = /p.gif { empty_gif; }
  }
}
EOF

# cpu_ticks PID...: user + system clock ticks of the processes, summed.
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
# rss_kib PID...: resident memory, summed.
rss_kib() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t; }

start_server() { # NAME -> sets PIDS (the processes whose CPU counts)
  case $1 in
    nginx)
      taskset -c 0 "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2>"$WORK/nginx.err" &
      ;;
    hyper-floor)
      taskset -c 0 "$FLOOR" "127.0.0.1:$PORT" 2>"$WORK/hyper-floor.err" &
      ;;
    edge-file|edge-kafka)
      local output=${1#edge-}
      PIXELPIPE_LOG=warn taskset -c 0 "$BIN" --listen-addr "127.0.0.1:$PORT" --admin-addr "127.0.0.1:$ADMIN" \
        --brokers "$KAFKA_ADDR" --topic "$TOPIC" --set "output=$output" --set "http.worker_threads=1" \
        --set "file.dir=$WORK/hits" --set "spool.dir=$WORK/spool-$output" ${EXTRA_SETTINGS:-} \
        >"$WORK/$1.log" 2>&1 &
      ;;
  esac
  SERVER=$!
  for _ in $(seq 1 100); do [ "$(http_status $PORT "$URL_PATH")" = 200 ] && break; sleep 0.1; done
  [ "$(http_status $PORT "$URL_PATH")" = 200 ] || die "$1 is not serving; see $WORK"
  if [ "$1" = edge-kafka ]; then
    for _ in $(seq 1 100); do [ "$(http_status $PORT /readyz)" = 200 ] && break; sleep 0.1; done
  fi
  # nginx's master forks the worker that serves; count both.
  PIDS="$SERVER $(pgrep -P "$SERVER" | tr "\n" " " || true)"
}

stop_server() {
  kill -TERM "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
}

run_one() { # NAME ROUND -> appends "name rps p50_ms p99_ms cpu_us_per_req rss_mib" to results
  start_server "$1"
  wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$PORT$URL_PATH" >/dev/null 2>&1 # warm-up
  local before after out
  before=$(cpu_ticks $PIDS)
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION_S}s" --latency "http://127.0.0.1:$PORT$URL_PATH")
  after=$(cpu_ticks $PIDS)
  local rss requests rps p50 p99 non2xx
  rss=$(rss_kib $PIDS)
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  stop_server
  [ -z "$non2xx" ] || die "$1 answered $non2xx requests with an error status"
  echo "$1 $rps $(to_ms "$p50") $(to_ms "$p99") $(awk -v t=$((after - before)) -v n="$requests" -v hz="$TICKS" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}') $((rss / 1024))" >>"$WORK/results"
  note "round $2: $1 $rps req/s, p99 $p99"
}

run_fixed() { # NAME ROUND -> appends "name rps p50_ms p99_ms cpu_us_per_req rss_mib" to fixed
  start_server "$1"
  local before after out rss requests
  before=$(cpu_ticks $PIDS)
  out=$(taskset -c 1 "$LOADGEN" --addr "127.0.0.1:$PORT" --mix pixel --rate "$FIXED_RATE" --requests 0 \
    --duration-s "$DURATION_S" --connections "$CONNS") || die "$1: $out"
  after=$(cpu_ticks $PIDS)
  rss=$(rss_kib $PIDS)
  stop_server
  local line; line=$(grep '^result ' <<<"$out")
  requests=$(grep -oE 'requests=[0-9]+' <<<"$line" | cut -d= -f2)
  echo "$1 $(grep -oE 'rps=[0-9.]+' <<<"$line" | cut -d= -f2) $(grep -oE 'p50_ms=[0-9.]+' <<<"$line" | cut -d= -f2)" \
    "$(grep -oE 'p99_ms=[0-9.]+' <<<"$line" | cut -d= -f2)" \
    "$(awk -v t=$((after - before)) -v n="$requests" -v hz="$TICKS" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}') $((rss / 1024))" >>"$WORK/fixed"
  note "round $2: $1 at $FIXED_RATE req/s: $(grep -oE 'p99_ms=[0-9.]+' <<<"$line")"
}

to_ms() { # wrk latency (e.g. 512.00us, 1.20ms, 2.01s) in ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /[0-9]s$/ && v !~ /ms$/) n *= 1000; printf "%.3f", n }'
}

# The broker and its PostgreSQL go to CPU 1 for the run (back to every CPU after), so none of
# their work lands on the servers' core.
broker_pids() {
  cat "$STATE_DIR/tansu.pid" 2>/dev/null || true
  pgrep -f "postgres.*$STATE_DIR/postgres" 2>/dev/null || pgrep -u postgres postgres 2>/dev/null || true
}
pin_broker() { for p in $(broker_pids); do taskset -a -p -c "$1" "$p" >/dev/null 2>&1 || true; done; }
pin_broker 1
trap 'stop_server 2>/dev/null || true; pin_broker "0-$(($(nproc) - 1))"' EXIT
step "$ROUNDS rounds of ${DURATION_S} s, $CONNS connections; servers on CPU 0, wrk on CPU 1"
for round in $(seq 1 "$ROUNDS"); do
  for name in $SERVERS; do run_one "$name" "$round"; done
done
step "$ROUNDS rounds at a fixed $FIXED_RATE req/s (pixelpipe-loadgen on CPU 1)"
for round in $(seq 1 "$ROUNDS"); do
  for name in $SERVERS; do run_fixed "$name" "$round"; done
done

median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
col() { awk -v n="$1" -v c="$2" '$1 == n {print $c}' "$WORK/$3" | median; }
table() { # FILE TITLE
  local base_rps base_cpu
  base_rps=$(col nginx 2 "$1") base_cpu=$(col nginx 5 "$1")
  printf '\n%s\n\n' "$2"
  echo "| server on CPU 0 | req/s | vs nginx | p50 ms | p99 ms | CPU µs per request | CPU vs nginx | RSS MiB |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
  for name in $SERVERS; do
    local rps cpu
    rps=$(col $name 2 "$1") cpu=$(col $name 5 "$1")
    printf '| %s | %.0f | %.2f | %s | %s | %s | %.2f | %s |\n' "$name" "$rps" \
      "$(awk -v a="$rps" -v b="$base_rps" 'BEGIN {print a / b}')" "$(col $name 3 "$1")" "$(col $name 4 "$1")" \
      "$cpu" "$(awk -v a="$cpu" -v b="$base_cpu" 'BEGIN {print a / b}')" "$(col $name 6 "$1")"
  done
}
printf '\n%s, %s cores, %s; %s rounds of %s s, %s connections; medians\n' \
  "$(date +%F)" "$(nproc)" "$(uname -m)" "$ROUNDS" "$DURATION_S" "$CONNS"
table results "As fast as it goes (wrk -t1 -c$CONNS on CPU 1):"
table fixed "At a fixed $FIXED_RATE req/s (pixelpipe-loadgen --mix pixel on CPU 1; latency from each request's due time):"
