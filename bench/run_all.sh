#!/usr/bin/env bash
# Runs every benchmark in bench/ against the local services (make bench).
# Not part of the test suite: figures go to docs/benchmarks.md by hand, with the command.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${PULSE_BIN:-.venv/bin}
source .pulse/services.env
for script in bench/bench_*.py; do
  echo "== $script"
  "$BIN/python" "$script"
done
