#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs, then runs pytest.
# Extra arguments go to pytest (e.g. ./run_tests.sh -k emulator -x).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/bootstrap.sh
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "run_tests.sh: pytest collected no tests; that is a failure, not a pass" >&2
  exit 1
fi
exit "$rc"
