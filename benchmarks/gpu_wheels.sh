#!/usr/bin/env bash
# Prepare the GPU check for a machine without network access (the lent H200): run this once HERE, on a machine
# that reaches PyPI, from anywhere in the repo. It saves into .whl/ (git-ignored) the wheels of the packages the
# GPU machine's image lacks or holds at other versions than requirements.lock.txt, at the lock's versions, built for
# that machine's Python (PY_VERSION, default 3.12) on x86-64 Linux. The device call then carries .whl and
# benchmarks/gpu_check.sh installs them over the image's packages (torch stays the image's CUDA build).
#
# The image (recorded in the device notes, 2026-11) has torch 2.11 (CUDA 13), transformers 5.17, huggingface-hub
# 1.33, accelerate 1.15, safetensors 0.8 and no transformer-lens. The list: transformer-lens and what it imports
# that the image lacks (datasets and its dill, multiprocess), transformers with the hub client and tokenizer of the
# lock, and what those import at run time whose image versions are unknown or too old (httpx2 and its stack, regex:
# transformers checks its version at import).
#
# `--workflow` adds Snakemake and what it imports that the image lacks (for benchmarks/gpu_workflow.sh, which runs the
# tiny DAG on the GPU): about 55 MB in all.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY_VERSION="${PY_VERSION:-3.12}"
PACKAGES="transformer-lens transformers huggingface-hub tokenizers regex datasets dill multiprocess fsspec fancy-einsum
httpx2 httpcore2 truststore anyio idna h11 typing-extensions"
if [ "${1:-}" = "--workflow" ]; then
    PACKAGES="$PACKAGES snakemake snakemake-interface-common snakemake-interface-executor-plugins
snakemake-interface-logger-plugins snakemake-interface-report-plugins snakemake-interface-scheduler-plugins
snakemake-interface-storage-plugins yte conda-inject platformdirs immutables configargparse connection-pool docutils
gitpython gitdb smmap humanfriendly jsonschema jsonschema-specifications referencing rpds-py nbformat fastjsonschema
jupyter-core traitlets packaging pulp tenacity smart-open throttler dpath sqlmodel sqlalchemy greenlet pydantic
pydantic-core annotated-types typing-inspection argparse-dataclass beartype typeguard"
fi

pins=()
for name in $PACKAGES; do
    lines=$(grep -i "^${name}==" requirements.lock.txt || true)
    if [ "$(printf '%s' "$lines" | grep -c .)" != 1 ]; then
        echo "gpu_wheels: requirements.lock.txt must pin ${name} on exactly one line; fix the list here" >&2
        exit 1
    fi
    pins+=("${lines%% *}")
done

git check-ignore -q .whl/probe || echo "/.whl/" >> .git/info/exclude
rm -rf .whl
for pin in "${pins[@]}"; do
    # a pure-Python package published only as a source archive (connection-pool) is built into a wheel here
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl "$pin" 2>/dev/null \
    || python3 -m pip wheel --quiet --no-deps -w .whl "$pin"
done
echo "gpu_wheels: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/ (the device call carries at most 64 MiB)"
