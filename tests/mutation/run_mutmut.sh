#!/usr/bin/env bash
# Mutation testing of the core modules listed under [tool.mutmut] in pyproject.toml: every
# mutant is a small edit of the source (a flipped comparison, a changed constant, a dropped
# argument) that the tests should notice. Survivors are listed at the end; docs/testing.md says
# which of them are equivalent (no behaviour changes) and why.
#
#   tests/mutation/run_mutmut.sh [JOBS]       # JOBS parallel mutants (default: all cores)
#   mutmut show MUTANT; mutmut apply MUTANT   # look at one survivor; put it in your checkout
#
# mutmut starts pytest once per mutant, so the exported tiny graphs are cached for the run
# (INFINI_TEST_EXPORT_CACHE, see tests/conftest.py). Needs fork (Linux, macOS, WSL).
set -euo pipefail
cd "$(dirname "$0")/../.."

cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
export INFINI_TEST_EXPORT_CACHE="$cache" OMP_NUM_THREADS=1

rm -rf mutants
start=$(date +%s)
mutmut run --max-children "${1:-$(nproc)}"
echo "mutmut run took $(( ($(date +%s) - start) / 60 )) min"
mutmut export-cicd-stats >/dev/null
python - <<'PY'
import json
s = json.load(open("mutants/mutmut-cicd-stats.json"))
tested = s["killed"] + s["survived"]
print(f"{s['killed']} of {tested} mutants killed ({s['killed'] / max(tested, 1):.1%}); "
      f"no tests: {s['no_tests']}, timeouts: {s['timeout']}, suspicious: {s['suspicious']}")
PY
mutmut results
