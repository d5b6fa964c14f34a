#!/usr/bin/env bash
# Fleet scale test: N real tenantry-enforcer processes (default 300) following one webhook's
# traffic view, with one PostgreSQL at its default max_connections (100) behind the webhook.
# Prints the PostgreSQL client connections held, resident memory per enforcer, and the time from
# a suspension committed in PostgreSQL to 403 at every enforcer (p50, p99).
#
#   bench/fleet.sh                          # TENANTRY_FLEET_SIZE=300, release binaries
#   TENANTRY_FLEET_SIZE=500 PROFILE=dev bench/fleet.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export TENANTRY_FLEET_SIZE=${TENANTRY_FLEET_SIZE:-300}
PROFILE=${PROFILE:-release}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --profile "$PROFILE" --bin tenantry-enforcer --bin tenantry-webhook --quiet
dir=$PROFILE
[ "$PROFILE" = dev ] && dir=debug
export TENANTRY_FLEET_BIN_DIR=$CARGO_TARGET_DIR/$dir
# Every enforcer is a process with a few descriptors; the harness polls each in turn.
ulimit -n "$(ulimit -Hn)" || true
cargo nextest run -p tenantry-enforcer --test fleet --no-capture 2>&1 | grep -E "fleet of|PASS|FAIL|panicked"
