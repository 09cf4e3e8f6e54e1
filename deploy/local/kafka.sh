#!/usr/bin/env bash
# The local Kafka-protocol broker (tansu, Apache-2.0) on 127.0.0.1, storing everything in a
# PostgreSQL cluster of its own (127.0.0.1:5433, data in .local/postgres).
#   kafka.sh install              apt-get install postgresql if missing (needs root); build tansu 0.6.0
#                                 once per machine (about 12 minutes on 2 cores)
#   kafka.sh start                install if needed, start PostgreSQL (first time: create the cluster,
#                                 the tansu role and database, apply tansu's schema), start the broker
#   kafka.sh topic NAME [PARTS]   create a topic (tansu does not auto-create); exists = fine
#   kafka.sh stop                 stop the broker only (SIGTERM); PostgreSQL and the data stay
#   kafka.sh kill                 SIGKILL the broker (outage tests); `start` works afterwards
#   kafka.sh stop-all             stop the broker, then PostgreSQL
#   kafka.sh status               the broker and PostgreSQL; exit status 1 unless the broker runs
#   kafka.sh psql [ARGS]          psql on the broker's database (as role tansu)
# Ports: PIXELPIPE_KAFKA_PORT (9092), PIXELPIPE_POSTGRES_PORT (5433).
# Production runs Apache Kafka or Redpanda; pixelpipe only speaks the Kafka protocol to it.
#
# Why PostgreSQL and not tansu's SQLite engine (measured on 2 cores): with clients connected, 0.6.0's
# SQLite engine panicked after a broker restart ("more or less than one row" in
# idempotent_message_check, "entered unreachable code" in update_group) and then failed every produce
# until restarted again; on PostgreSQL the broker survived SIGTERM and SIGKILL restarts under load
# with nothing lost. The cost: every record is a Postgres row, so consuming is about 2x slower (one
# sink drained ~8k hits/s against ~18k on SQLite); producing ran at the same rate. The memory engine
# loses committed offsets inside a batch. So only the PostgreSQL build of tansu is used.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PID_FILE="$STATE_DIR/tansu.pid"
LOG_FILE="$STATE_DIR/tansu.log"
PG_PORT="${PIXELPIPE_POSTGRES_PORT:-5433}"
IS_ROOT=false; [ "$(id -u)" = 0 ] && IS_ROOT=true
# When run as root, PostgreSQL runs as the system user postgres, which owns $PG_DIR; so every parent
# directory of $PG_DIR needs o+x (the default .local under a checkout in /work or /home has it).
# A checkout postgres cannot reach (say under /root) keeps its cluster in /var/lib/pixelpipe-local
# instead, one directory per state dir.
pg_paths() {
  PG_DIR="$STATE_DIR/postgres"
  if $IS_ROOT && id postgres >/dev/null 2>&1 && ! (cd / && runuser -u postgres -- test -x "$STATE_DIR") 2>/dev/null; then
    PG_DIR="/var/lib/pixelpipe-local/postgres-$(printf '%s' "$STATE_DIR" | cksum | cut -d' ' -f1)"
  fi
  PG_DATA="$PG_DIR/data"
  PG_SOCKETS="$PG_DIR/run"             # its unix socket (admin access, peer auth) lives here only
  PG_LOG="$PG_DIR/postgres.log"
}
pg_paths # again after installing PostgreSQL, which creates the user postgres
# The password of role tansu (made once, random, readable by this user only). Over TCP the cluster
# asks for passwords (scram-sha-256); there is no trust rule, so other local users get no access.
PG_PASSWORD_FILE="$STATE_DIR/postgres-tansu.password"
SCHEMA="$ROOT/deploy/local/vendor/tansu-$TANSU_VERSION/010-schema.sql"

install_tansu() {
  if [ -x "$TANSU_BIN" ]; then
    note "tansu $TANSU_VERSION (postgres engine) already installed at $TANSU_BIN"
    return 0
  fi
  need cargo "Install Rust first (https://rustup.rs)."
  need cc "Install a C compiler first: apt-get install -y build-essential"
  step "building tansu $TANSU_VERSION into $TOOLS_DIR (first time only; about 12 minutes on 2 cores)"
  local build_log="$STATE_DIR/tansu-build.log" root
  root=$(dirname "$(dirname "$TANSU_BIN")")
  mkdir -p "$TOOLS_DIR"
  # dynostore,postgres: the default features have no storage engine at all.
  if ! cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,postgres \
      --root "$root.partial" 2>&1 | tee "$build_log" |
      awk '/Compiling/ { n++; if (n % 25 == 0) { printf "    ... %d crates compiled\n", n; fflush() } }'; then
    die "building tansu failed; see $build_log"
  fi
  [ -x "$root.partial/bin/tansu" ] || die "building tansu failed; see $build_log"
  rm -rf "$root" && mv "$root.partial" "$root"
  note "installed $TANSU_BIN"
}

# pg_bin: the directory of the PostgreSQL server programs (initdb, pg_ctl, ...); Debian keeps them
# out of PATH. Once the cluster exists, the major version it was made with.
pg_bin() {
  local dir
  if [ -f "$PG_DATA/PG_VERSION" ]; then
    dir="/usr/lib/postgresql/$(cat "$PG_DATA/PG_VERSION")/bin"
  else
    dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)
  fi
  [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

install_postgres() {
  if pg_bin >/dev/null; then
    note "PostgreSQL already installed ($(pg_bin))"
    return 0
  fi
  [ -f "$PG_DATA/PG_VERSION" ] && die "$PG_DATA was made by PostgreSQL $(cat "$PG_DATA/PG_VERSION"), which is not installed"
  $IS_ROOT || die "installing PostgreSQL needs root: sudo apt-get install -y postgresql"
  need apt-get "This script installs PostgreSQL from Debian/Ubuntu packages."
  # The package also creates Debian's own cluster "main" (port 5432); this script does not use it.
  step "installing postgresql (apt)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
    || die "apt-get install postgresql failed"
  pg_paths
  pg_bin >/dev/null || die "postgresql is installed but no /usr/lib/postgresql/*/bin/initdb was found"
  note "installed PostgreSQL ($(pg_bin))"
}

install() { install_postgres; install_tansu; }

# as_pg CMD...: run CMD as the user the cluster belongs to (initdb refuses to run as root).
as_pg() {
  if $IS_ROOT; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

pg_superuser() { if $IS_ROOT; then echo postgres; else id -un; fi; }

# psql_admin ARGS...: psql as the cluster's superuser over the unix socket (peer auth).
psql_admin() {
  as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKETS" -p "$PG_PORT" \
    -U "$(pg_superuser)" -d postgres "$@"
}

# psql_tansu ARGS...: psql as role tansu on database tansu over TCP, as the broker connects.
psql_tansu() {
  PGPASSWORD="$(cat "$PG_PASSWORD_FILE")" "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$PG_PORT" -U tansu -d tansu "$@"
}

pg_running() { [ -f "$PG_DATA/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; }
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2; }
pg_pid() { head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null || echo "?"; }

init_postgres() {
  [ -f "$PG_DATA/PG_VERSION" ] && return 0
  step "creating the PostgreSQL cluster in $PG_DATA (first time only)"
  [ "${#PG_SOCKETS}" -le 90 ] || die "$PG_SOCKETS is too long for a unix socket path; set PIXELPIPE_STATE_DIR to a shorter directory"
  if $IS_ROOT; then
    mkdir -p "$PG_DIR"
    as_pg test -x "$PG_DIR/.." \
      || die "the user postgres cannot reach $PG_DIR (a parent directory lacks o+x); set PIXELPIPE_STATE_DIR to a directory it can reach"
    chown postgres:postgres "$PG_DIR"
  else
    mkdir -p "$PG_DIR"
  fi
  chmod 700 "$PG_DIR"
  as_pg mkdir -p "$PG_SOCKETS"
  # peer auth on the socket for the superuser (this script), passwords over TCP (the broker).
  if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -E UTF8 --no-locale \
      --auth-local=peer --auth-host=scram-sha-256 >"$PG_DIR/initdb.log" 2>&1; then
    cat "$PG_DIR/initdb.log" >&2
    die "initdb failed"
  fi
  printf "\n# deploy/local/kafka.sh: loopback only; the port is given at start (-p)\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n" \
    "$PG_SOCKETS" >>"$PG_DATA/postgresql.conf"
  note "cluster created (superuser $(pg_superuser), log $PG_DIR/initdb.log)"
}

start_postgres() {
  install_postgres
  PG_BIN=$(pg_bin)
  if pg_running; then
    pg_ready || die "PostgreSQL of $PG_DATA runs but does not answer on 127.0.0.1:$PG_PORT (started with another PIXELPIPE_POSTGRES_PORT?); kafka.sh stop-all, then start"
    note "PostgreSQL already running on 127.0.0.1:$PG_PORT (pid $(pg_pid))"
  else
    port_open 127.0.0.1 "$PG_PORT" && die "port $PG_PORT is taken by another process; set PIXELPIPE_POSTGRES_PORT"
    init_postgres
    step "starting PostgreSQL on 127.0.0.1:$PG_PORT (data in $PG_DATA)"
    if ! as_pg "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -o "-p $PG_PORT" -w -t 30 >/dev/null; then
      tail -n 20 "$PG_LOG" >&2 || true
      die "PostgreSQL did not start; log: $PG_LOG"
    fi
    local deadline=$((SECONDS + 30))
    until pg_ready; do
      [ "$SECONDS" -lt "$deadline" ] || die "PostgreSQL did not answer on 127.0.0.1:$PG_PORT within 30 s; log: $PG_LOG"
      sleep 0.2
    done
    note "PostgreSQL up (pid $(pg_pid), log $PG_LOG)"
  fi
  setup_database
}

# Role and database tansu, and tansu's own schema (its crate does not create tables). Idempotent.
setup_database() {
  if [ ! -s "$PG_PASSWORD_FILE" ]; then
    (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$PG_PASSWORD_FILE")
  fi
  local password
  password=$(cat "$PG_PASSWORD_FILE")
  # On stdin, so the password is not on a command line. Setting it each time keeps it in step with
  # the file. The password is hex, safe inside the quotes.
  psql_admin >/dev/null <<SQL || die "could not create role and database tansu; log: $PG_LOG"
SELECT 'CREATE ROLE tansu LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tansu')\gexec
ALTER ROLE tansu WITH LOGIN PASSWORD '$password';
SELECT 'CREATE DATABASE tansu OWNER tansu' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tansu')\gexec
SQL
  # scram_credential is the schema's last table (created after its transaction commits).
  if [ "$(psql_tansu -q -tA -c "SELECT to_regclass('public.scram_credential') IS NOT NULL")" = t ]; then
    return 0
  fi
  step "applying tansu's schema to database tansu (${SCHEMA#"$ROOT"/})"
  psql_tansu -q -f "$SCHEMA" >/dev/null || die "applying $SCHEMA failed"
  note "schema applied"
}

stop_postgres() {
  step "stopping PostgreSQL"
  PG_BIN=$(pg_bin) || { note "PostgreSQL is not installed"; return 0; }
  if ! pg_running; then
    note "PostgreSQL is not running"
    return 0
  fi
  as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 >/dev/null || die "pg_ctl stop failed; log: $PG_LOG"
  note "PostgreSQL stopped"
}

start() {
  if pid_alive "$PID_FILE" && port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
    note "broker already running on $KAFKA_ADDR (pid $(cat "$PID_FILE"))"
    return 0
  fi
  # A broker of ours that does not answer (hung, or still starting): replace it.
  pid_alive "$PID_FILE" && stop_pid "$PID_FILE" "unresponsive broker"
  port_open "$KAFKA_HOST" "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process; set PIXELPIPE_KAFKA_PORT"
  install_tansu
  start_postgres
  step "starting tansu on $KAFKA_ADDR (data in PostgreSQL 127.0.0.1:$PG_PORT, database tansu)"
  # The storage URL goes in through tansu's STORAGE_ENGINE variable (same as --storage-engine), so the
  # password is not on the command line. sslmode=disable: otherwise it insists on TLS to 127.0.0.1
  # and fails. The cluster id is pinned: the topics in Postgres belong to it.
  # `exec` makes the recorded pid the broker's own, so `stop` and `kill` signal the broker itself.
  (cd "$STATE_DIR" &&
    STORAGE_ENGINE="postgres://tansu:$(cat "$PG_PASSWORD_FILE")@127.0.0.1:$PG_PORT/tansu?sslmode=disable" \
    exec nohup "$TANSU_BIN" broker \
      --cluster-id tansu_cluster \
      --listener-url "tcp://$KAFKA_ADDR" \
      --advertised-listener-url "tcp://$KAFKA_ADDR" \
      >>"$LOG_FILE" 2>&1) &
  echo $! >"$PID_FILE"
  if ! wait_port "$KAFKA_HOST" "$KAFKA_PORT" 30; then
    tail -n 20 "$LOG_FILE" >&2 || true
    die "broker did not answer on $KAFKA_ADDR within 30 s; log: $LOG_FILE"
  fi
  note "broker up (pid $(cat "$PID_FILE"), log $LOG_FILE)"
}

# SIGKILL, as a crash would; waits until the process is gone so that `start` can follow at once.
kill_broker() {
  step "killing the broker (SIGKILL)"
  if ! pid_alive "$PID_FILE"; then
    rm -f "$PID_FILE"
    note "broker is not running"
    return 0
  fi
  local pid
  pid=$(cat "$PID_FILE")
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  rm -f "$PID_FILE"
  note "broker killed (pid $pid)"
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

status() {
  local rc=0
  if pid_alive "$PID_FILE" && port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
    echo "running on $KAFKA_ADDR (pid $(cat "$PID_FILE"))"
  else
    echo "not running"; rc=1
  fi
  if PG_BIN=$(pg_bin) && pg_running && pg_ready; then
    echo "postgres: running on 127.0.0.1:$PG_PORT (pid $(pg_pid), data in $PG_DATA)"
  else
    echo "postgres: not running"
  fi
  return $rc
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) step "stopping the broker"; stop_pid "$PID_FILE" broker ;;
  kill) kill_broker ;;
  stop-all) step "stopping the broker"; stop_pid "$PID_FILE" broker; stop_postgres ;;
  status) status ;;
  topic) shift; topic "$@" ;;
  psql)
    shift
    PG_BIN=$(pg_bin) || die "PostgreSQL is not installed"
    [ -s "$PG_PASSWORD_FILE" ] || die "no tansu database yet: kafka.sh start"
    psql_tansu "$@" ;;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
