#!/usr/bin/env bash
# Know when the world moves: build a throwaway venv with the NEWEST release of every dependency
# (no lock; torch stays at the CPU 2.13.0 build), run the quick tier plus the generation and
# self-check tests, and print which versions differ from requirements/lock.txt and what failed.
# Not part of .ci/run: resolving the newest releases is not reproducible. Run it before each
# submission and give its result in the closing note.
#
#   bash tools/check-newest.sh            # venv in ${NEWEST_VENV:-/tmp/shiftlens-newest}
set -uo pipefail
cd "$(dirname "$0")/.."
V=${NEWEST_VENV:-/tmp/shiftlens-newest}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1
rm -rf "$V"
python3 -m venv "$V"
"$V/bin/pip" install -q torch==2.13.0 || exit 2
echo "torch==2.13.0" > "$V/torch-pin.txt"
"$V/bin/pip" install -q --upgrade --upgrade-strategy eager -c "$V/torch-pin.txt" -e ".[dev,real,ray]" || exit 2
"$V/bin/pip" install -q --no-deps -r requirements/real.txt || true

echo "== versions that differ from requirements/lock.txt"
"$V/bin/python" - <<'PY'
import re
from importlib.metadata import PackageNotFoundError, version
n = 0
for line in open("requirements/lock.txt"):
    m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line.split("#")[0].strip())
    if not m:
        continue
    name, want = m.groups()
    try:
        have = version(name)
    except PackageNotFoundError:
        have = "(not installed)"
    if have != want:
        n += 1
        print(f"  {name}: lock {want} -> newest {have}")
print(f"  {n} differ")
PY

echo "== quick tier + generation/self-check tests on the newest releases"
"$V/bin/python" -m pytest -q -p no:cacheprovider -x --no-header -rf \
  -m "(not slow and not real and not browser) or generation" 2>&1 | tail -25
rc=${PIPESTATUS[0]}
echo "== check-newest: pytest exit $rc ($( [ "$rc" = 0 ] && echo 'all passed on the newest releases' || echo 'FAILURES above: a new release changes behaviour' ))"
exit "$rc"
