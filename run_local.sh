#!/usr/bin/env bash
# Run the importer locally. `./run_local.sh --demo` imports a generated project into a local
# Supabase stand-in; otherwise the arguments go to `python -m pipeline.main`, on Beam's FnApiRunner
# with 16 worker threads (the default DirectRunner loses data or refuses this pipeline; see README).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/bootstrap.sh >&2
if [ "${1:-}" = "--demo" ]; then
  shift
  exec .venv/bin/python -m pipeline.demo "$@"
fi
exec .venv/bin/python -m pipeline.main --runner=FnApiRunner --direct_running_mode=multi_threading \
  --direct_num_workers="${DIRECT_NUM_WORKERS:-16}" "$@"
