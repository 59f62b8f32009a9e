#!/usr/bin/env bash
# make bench: the baseline benchmark; writes BENCHMARKS.md. `make bench QUICK=1` for a short run.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/bench.py "$1"
