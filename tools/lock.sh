#!/usr/bin/env bash
# Regenerate requirements/lock.txt: every runtime, dev, real-tier and Ray dependency of
# pyproject.toml, transitive ones included, pinned for Python 3.11 on x86-64 Linux, with the CPU
# build of torch 2.13.0 (constraints.txt). The README's commands and .ci/run install through it.
#
#   bash tools/lock.sh            # then run `bash .ci/run` and commit requirements/lock.txt
#
# uv resolves against PyPI; the CPU torch wheel comes from the find-links folder that this
# workplace's machines carry (/opt/wheels, or set TORCH_FIND_LINKS), so no CUDA package enters.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v uv >/dev/null 2>&1; then UV=uv
elif [ -x .venv/bin/uv ]; then UV=.venv/bin/uv
else python3 -m pip install -q --user uv && UV="$(python3 -m site --user-base)/bin/uv"; fi
"$UV" pip compile pyproject.toml \
  --extra dev --extra real --extra ray \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --constraint constraints.txt \
  --find-links "${TORCH_FIND_LINKS:-/opt/wheels}" --no-emit-find-links \
  --custom-compile-command "bash tools/lock.sh" \
  --output-file requirements/lock.txt "$@"
