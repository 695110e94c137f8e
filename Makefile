# The two commands of README.md. Both create .venv (if missing) and install circuitflow into it first, with every
# package at the version pinned in requirements.lock.txt (the versions CI tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock.txt
UV_VERSION := 0.13.9
# torch's OpenMP threads spin at each parallel region; on shared cores that slows small models many-fold (waiting
# passively changes no arithmetic: trained weights are bit-identical)
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test install lock

install: $(STAMP)

# torch first: on the project's CI machines requirements-torch.txt names a CPU wheel on disk; elsewhere it is PyPI's
# build (install the build for your CUDA from pytorch.org first if you need one). The lock then constrains every
# other package, so a new release on PyPI cannot change what a fresh install runs.
$(STAMP): pyproject.toml $(LOCK) requirements-torch.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements-torch.txt
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[test,slurm]"
	touch $(STAMP)

# After an interruption type `make run` again: the lock a killed run left is released when no snakemake process runs
# on this folder (a live run keeps it), and the profile reruns the jobs the kill cut short (rerun-incomplete).
# Then Snakemake's report of the run: results/report.html (figures, headline tables, provenance, runtimes).
run: $(STAMP)
	$(BIN)/python -c 'from circuitflow.io import release_stale_lock; release_stale_lock()'
	$(BIN)/snakemake --cores all --workflow-profile workflow/profiles/default
	$(BIN)/snakemake --cores all --workflow-profile workflow/profiles/default --report results/report.html

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Move the lock forward: resolve pyproject.toml's ranges to today's releases (torch stays at requirements-torch.txt),
# then `make test` on the new lock before committing it. tests/unit/test_lock.py checks the lock against pyproject.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	$(BIN)/uv pip compile pyproject.toml --extra test --extra slurm --universal --python-version 3.11 \
		-c requirements-torch.txt --upgrade -o $(LOCK)
	# envs/circuitflow.yaml records both files' digests: Snakemake rebuilds a conda env only when its file changes
	for f in requirements-torch.txt $(LOCK); do sed -i -E "s|^# [0-9a-f]{64}  $$f$$|# $$(sha256sum $$f)|" envs/circuitflow.yaml; done
	rm -f $(STAMP)
