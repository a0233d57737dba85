#!/usr/bin/env bash
# Run the tests marked slow (huge arrays, the long fuzz run); they are skipped by default.
#   scripts/run_slow_tests.sh [extra pytest args]
# The build must be in place (python setup.py build_ext --inplace).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src:tests${PYTHONPATH:+:$PYTHONPATH}"
exec python -m pytest tests -m slow -s -q -p no:cacheprovider "$@"
