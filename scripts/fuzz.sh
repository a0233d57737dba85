#!/usr/bin/env bash
# The long fuzz run: every driver of tests/test_fuzz.py in turn, each for a batch of examples
# with a fresh random seed, under the hypothesis profile "fuzz", until the time is up; then
# the number of examples run per driver.
#
#   scripts/fuzz.sh [seconds]        (default 600; the build must be in place)
#
# A failure stops the run and prints hypothesis's minimal failing example and its @seed.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
report="$(mktemp "${TMPDIR:-/tmp}/fastopt-fuzz.XXXXXX.json")"
trap 'rm -f "$report"' EXIT
export PYTHONPATH="src:tests${PYTHONPATH:+:$PYTHONPATH}"
HYPOTHESIS_PROFILE=fuzz FASTOPT_FUZZ_SECONDS="$seconds" \
FASTOPT_FUZZ_REPORT="$report" \
    python -m pytest tests/test_fuzz.py -m slow -k test_fuzz_for_a_while -q -p no:cacheprovider
python - "$report" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ex = r["examples"]
print(f"fuzz: {sum(ex.values())} examples in {r['seconds']:.0f} s over {len(ex)} drivers "
      f"({r['rounds']} rounds); fewest {min(ex.values())}, most {max(ex.values())}")
for key in sorted(ex):
    print(f"  {key:28} {ex[key]:>7}")
PY
