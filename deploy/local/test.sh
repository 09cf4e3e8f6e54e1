#!/usr/bin/env bash
# Runs every test of the workspace: starts the services the integration tests talk to over
# loopback (installing them the first time), then `cargo test --workspace --features integration`.
# Without that feature (a plain `cargo test`) the tests that need these services are listed as
# ignored, each saying what it needs.
# Extra arguments go to cargo test, e.g. `deploy/local/test.sh -p pixelpipe-sink` or a test name.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need cargo "Install Rust first (https://rustup.rs)."
"$ROOT/deploy/local/kafka.sh" start
"$ROOT/deploy/local/clickhouse.sh" start
"$ROOT/deploy/local/chdb.sh" install
"$ROOT/deploy/local/chromium.sh" install
# Not PIXELPIPE_*: the binaries the tests start read those as settings and reject unknown ones.
export TEST_KAFKA_BROKERS="$KAFKA_ADDR"
export TEST_CLICKHOUSE_URL="http://127.0.0.1:8123"
TEST_CHDB_PYTHON="$("$ROOT/deploy/local/chdb.sh" python)"
export TEST_CHDB_PYTHON
TEST_CHROMIUM="$("$ROOT/deploy/local/chromium.sh" path)"
export TEST_CHROMIUM

step "running cargo test --workspace --features integration"
cd "$ROOT"
cargo test --workspace --locked --features integration "$@"
