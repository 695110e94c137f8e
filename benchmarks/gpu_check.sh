#!/usr/bin/env bash
# The GPU check of issue 9 (benchmarks/gpu_check_expected.md): run from anywhere in the repo on a machine with an
# NVIDIA GPU; arguments go to benchmarks/gpu_check.py (e.g. --out DIR, --budget-s 480). It writes gpu_check.json and
# gpu_check.md to --out (default: $OUT if set, else benchmarks/results) and ends in under 9 minutes on one H100/H200.
#
# Which Python runs it, first that works:
#   1. the repo's .venv, when its torch sees a GPU (`make install` on a GPU machine; the lock's versions);
#   2. the machine's python3, when its torch sees a GPU (the lent H200's image, no network): the wheels in .whl/
#      (made beforehand by `bash benchmarks/gpu_wheels.sh` on a machine with PyPI, and carried) are installed over
#      its packages into a temporary folder first;
#   3. else `make install` (needs PyPI: requirements-torch.txt is PyPI's torch, a CUDA build on x86-64 Linux).
set -euo pipefail
cd "$(dirname "$0")/.."

sees_gpu() { "$1" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; }

if [ -x .venv/bin/python ] && sees_gpu .venv/bin/python; then
    py=.venv/bin/python
elif command -v python3 >/dev/null && sees_gpu python3; then
    py=python3
    if compgen -G ".whl/*.whl" >/dev/null; then
        site=$(mktemp -d)
        python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
        export PYTHONPATH="$site"
    fi
else
    make install
    py=.venv/bin/python
    if ! sees_gpu "$py"; then
        echo "gpu_check: the torch in .venv sees no GPU: install the CUDA build of torch for this machine's driver" \
             "(pytorch.org) into .venv, then run this again" >&2
        exit 1
    fi
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$py" -c 'import accelerate, transformers, transformer_lens.model_bridge' 2>/dev/null; then
    "$py" -c 'import accelerate, transformers, transformer_lens.model_bridge' 2>&1 | tail -1 >&2 || true
    echo "gpu_check: $py cannot import the packages above: on a machine without network, run" \
         "'bash benchmarks/gpu_wheels.sh' on one with PyPI first and bring .whl/ along" >&2
    exit 1
fi
PYTHONUNBUFFERED=1 exec "$py" -m benchmarks.gpu_check "$@"
