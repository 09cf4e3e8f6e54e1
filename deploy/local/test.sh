#!/usr/bin/env bash
# Runs every test of the workspace: starts the services the integration tests talk to over
# loopback (installing them the first time), then `cargo test --workspace --features integration`.
# Without that feature (a plain `cargo test`) the tests that need these services are listed as
# ignored, each saying what it needs.
# Then the chaos suite's short form (bench/scripts/chaos.sh --short: the broker restarted under
# load, every answered hit stored once), with debug builds of the binaries.
# Extra arguments go to cargo test, e.g. `deploy/local/test.sh -p pixelpipe-sink` or a test name;
# with extra arguments the chaos run is skipped (it tests the whole pipeline, not a selection).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need cargo "Install Rust first (https://rustup.rs)."
"$ROOT/deploy/local/kafka.sh" start
"$ROOT/deploy/local/clickhouse.sh" start
"$ROOT/deploy/local/clickhouse-cluster.sh" start
"$ROOT/deploy/local/chdb.sh" install
"$ROOT/deploy/local/chromium.sh" install
"$ROOT/deploy/local/prometheus.sh" install
"$ROOT/deploy/local/hadolint.sh" install
"$ROOT/deploy/local/compose.sh" install
"$ROOT/deploy/local/kubectl.sh" install
"$ROOT/deploy/local/kubernetes-validate.sh" install
# Not PIXELPIPE_*: the binaries the tests start read those as settings and reject unknown ones.
export TEST_KAFKA_BROKERS="$KAFKA_ADDR"
export TEST_CLICKHOUSE_URL="http://127.0.0.1:8123"
# The replicated cluster (clickhouse-cluster.sh): its name and each replica's HTTP URL.
export TEST_CLICKHOUSE_CLUSTER=pixelpipe
export TEST_CLICKHOUSE_REPLICAS="http://127.0.0.1:8124,http://127.0.0.1:8125"
# Where each installed tool is, as its script says: the variable the tests read, the script and
# the script's word for the path.
while read -r var script word; do
  export "$var=$("$ROOT/deploy/local/$script" "$word")"
done <<'TOOLS'
TEST_CHDB_PYTHON chdb.sh python
TEST_CHROMIUM chromium.sh path
TEST_PROMETHEUS prometheus.sh path
TEST_HADOLINT hadolint.sh path
TEST_DOCKER_COMPOSE compose.sh path
TEST_KUBECTL kubectl.sh path
TEST_KUBERNETES_VALIDATE kubernetes-validate.sh path
TOOLS

step "running cargo test --workspace --features integration"
cd "$ROOT"
cargo test --workspace --locked --features integration "$@"

if [ $# -eq 0 ]; then
  step "building the binaries for the chaos suite (debug)"
  cargo build --locked -p pixelpipe-ingest -p pixelpipe-sink -p pixelpipe-bench --bins
  step "running bench/scripts/chaos.sh --short"
  BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/debug" "$ROOT/bench/scripts/chaos.sh" --short
fi
