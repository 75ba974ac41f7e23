"""Check that the running environment holds exactly the versions pinned in a lock file.

    python tools/check_lock.py requirements/lock.txt [requirements/real.txt]

Prints each difference (missing package, other version) and exits 1 if there is one. A local
version label is compared too (the lock pins ``torch==2.13.0+cpu``, and a CUDA build differs).
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version


def pins(path: str) -> dict[str, str]:
    out = {}
    for line in open(path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def main(paths: list[str]) -> int:
    bad = []
    n = 0
    for path in paths:
        for name, want in pins(path).items():
            n += 1
            try:
                have = version(name)
            except PackageNotFoundError:
                bad.append(f"{name}: not installed (lock: {want})")
                continue
            if have != want:
                bad.append(f"{name}: {have} installed, lock pins {want}")
    for b in bad:
        print(f"lock mismatch: {b}", file=sys.stderr)
    print(f"check_lock: {n} pins, {len(bad)} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["requirements/lock.txt"]))
