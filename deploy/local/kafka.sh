#!/usr/bin/env bash
# The local Kafka-protocol broker (tansu, Apache-2.0) on 127.0.0.1.
#   kafka.sh install              build tansu 0.6.0 once per machine (about 10 min on 2 cores)
#   kafka.sh start                install if needed, start, wait until it answers
#   kafka.sh topic NAME [PARTS]   create a topic (tansu does not auto-create); exists = fine
#   kafka.sh stop | status
# Production runs Apache Kafka or Redpanda; pixelpipe only speaks the Kafka protocol to it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PID_FILE="$STATE_DIR/tansu.pid"
LOG_FILE="$STATE_DIR/tansu.log"
DATA_DIR="$STATE_DIR/kafka"

install() {
  if [ -x "$TANSU_BIN" ]; then
    note "tansu $TANSU_VERSION already installed at $TANSU_BIN"
    return 0
  fi
  need cargo "Install Rust first (https://rustup.rs)."
  need cc "Install a C compiler first: apt-get install -y build-essential"
  step "building tansu $TANSU_VERSION into $TOOLS_DIR (first time only; about 10 minutes on 2 cores)"
  local build_log="$STATE_DIR/tansu-build.log" root="$TOOLS_DIR/tansu-$TANSU_VERSION"
  mkdir -p "$TOOLS_DIR"
  # dynostore,libsql: the default features have no storage engine at all.
  if ! cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
      --root "$root.partial" 2>&1 | tee "$build_log" |
      awk '/Compiling/ { n++; if (n % 25 == 0) { printf "    ... %d crates compiled\n", n; fflush() } }'; then
    die "building tansu failed; see $build_log"
  fi
  [ -x "$root.partial/bin/tansu" ] || die "building tansu failed; see $build_log"
  rm -rf "$root" && mv "$root.partial" "$root"
  note "installed $TANSU_BIN"
}

start() {
  if pid_alive "$PID_FILE" && port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
    note "broker already running on $KAFKA_ADDR (pid $(cat "$PID_FILE"))"
    return 0
  fi
  port_open "$KAFKA_HOST" "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process; set PIXELPIPE_KAFKA_PORT"
  install
  mkdir -p "$DATA_DIR"
  step "starting tansu on $KAFKA_ADDR (data in $DATA_DIR)"
  # sqlite, not memory://: 0.6.0's memory engine returns nothing to a consumer that resumes
  # inside a batch, which breaks committed offsets; sqlite also survives restarts.
  # `exec` makes the recorded pid the broker's own, so `stop` signals the broker itself.
  (cd "$DATA_DIR" && exec nohup "$TANSU_BIN" broker \
      --listener-url "tcp://$KAFKA_ADDR" \
      --advertised-listener-url "tcp://$KAFKA_ADDR" \
      --storage-engine "sqlite://tansu.db" >>"$LOG_FILE" 2>&1) &
  echo $! >"$PID_FILE"
  if ! wait_port "$KAFKA_HOST" "$KAFKA_PORT" 30; then
    tail -n 20 "$LOG_FILE" >&2 || true
    die "broker did not answer on $KAFKA_ADDR within 30 s; log: $LOG_FILE"
  fi
  note "broker up (pid $(cat "$PID_FILE"), log $LOG_FILE)"
}

topic() {
  local name=${1:?topic name} partitions=${2:-4} out
  step "creating topic $name with $partitions partitions"
  if out=$("$TANSU_BIN" topic create "$name" --broker "tcp://$KAFKA_ADDR" --partitions "$partitions" 2>&1); then
    note "created"
  elif grep -qi "exist" <<<"$out"; then
    note "already exists"
  else
    printf '%s\n' "$out" >&2
    die "could not create topic $name"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) step "stopping the broker"; stop_pid "$PID_FILE" broker ;;
  status)
    if pid_alive "$PID_FILE" && port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
      echo "running on $KAFKA_ADDR (pid $(cat "$PID_FILE"))"
    else
      echo "not running"; exit 1
    fi ;;
  topic) shift; topic "$@" ;;
  *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
