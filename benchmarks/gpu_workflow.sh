#!/usr/bin/env bash
# The workflow on a GPU: runs a config's whole DAG with `device: cuda` (default: the tiny test config) in a fresh
# folder, then checks that no table holds ±inf and summarises the jobs (benchmarks/gpu/workflow_*.md). On a GPU
# machine without network (the lent H200) run `bash benchmarks/gpu_wheels.sh --workflow` where PyPI is reachable first
# and bring .whl/ along; its wheels are installed over the machine's packages into a temporary folder.
#   bash benchmarks/gpu_workflow.sh [CONFIGFILE]      # writes to $OUT if set, else benchmarks/results
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-tests/configs/tiny.yaml}"
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
py=python3
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    py=.venv/bin/python
elif compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d)
    python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
    export PYTHONPATH="$site" PATH="$site/bin:$PATH"
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
work=$(mktemp -d)
start=$(date +%s)
set +e
"$py" -m snakemake -s Snakefile --directory "$work" --configfile "$config" --config device=cuda --cores all \
    >"$out/snakemake.log" 2>&1
rc=$?
set -e
wall=$(( $(date +%s) - start ))
tail -5 "$out/snakemake.log"
"$py" -m benchmarks.gpu_workflow "$work/results" --config "$config" --rc "$rc" --wall-s "$wall" --out "$out"
