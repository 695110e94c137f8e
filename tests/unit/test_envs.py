"""The software environments for `--sdm conda` (envs/circuitflow.yaml) and `--sdm apptainer` (containers/Dockerfile).

Neither can be built on the project's machines (no conda channels, no container engine), so these tests keep the
recipes from drifting away from what `make install` installs: the same Python, torch from requirements-torch.txt,
every other package constrained by requirements.lock.txt, paths that exist, and (for conda, which Snakemake rebuilds
only when the env file changes) the digests of the requirement files the env was written for.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from pathlib import Path

import yaml

from tests.unit.test_lock import canonical, lock_pins

ROOT = Path(__file__).resolve().parents[2]
ENV_FILE = ROOT / "envs/circuitflow.yaml"
DOCKERFILE = ROOT / "containers/Dockerfile"
DOCKERIGNORE = ROOT / "containers/Dockerfile.dockerignore"
ROOT_VAR = "${CIRCUITFLOW_ROOT}"
TORCH_REQ = "requirements-torch.txt"
LOCK = "requirements.lock.txt"


def env() -> dict:
    return yaml.safe_load(ENV_FILE.read_text())


def env_pip_lines() -> list[str]:
    """The pip section of the env file (conda hands it to pip as one requirements file)."""
    sections = [d["pip"] for d in env()["dependencies"] if isinstance(d, dict)]
    assert len(sections) == 1, f"{ENV_FILE.name}: expected one pip section, found {len(sections)}"
    return sections[0]


def lock_python() -> str:
    """The Python version requirements.lock.txt was resolved for (``--python-version`` in its header)."""
    match = re.search(r"--python-version (\d+\.\d+)", (ROOT / LOCK).read_text())
    assert match, f"{LOCK} does not record --python-version in its header"
    return match[1]


def option_values(args: list[str], option: str) -> list[str]:
    """Values of ``option`` (given as ``-c X``) in a pip argument list."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == option]


def assert_pins_agree_with_lock(requirements: list[str], where: str) -> None:
    """Any ``name==version`` among ``requirements`` must be the version the lock pins."""
    pins = lock_pins()
    for req in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;]+)", req.strip("'\""))
        if match:
            locked = [str(v) for v, _ in pins.get(canonical(match[1]), [])]
            assert match[2] in locked, f"{where} pins {match[1]}=={match[2]}, {LOCK} pins {locked}"


# --- conda -------------------------------------------------------------------------------------------------------


def test_env_uses_only_current_channels_and_the_locks_python():
    spec = env()
    assert spec["channels"] == ["conda-forge", "nodefaults"]
    conda_deps = [d for d in spec["dependencies"] if isinstance(d, str)]
    assert f"python={lock_python()}" in conda_deps, f"{ENV_FILE.name} must pin python={lock_python()} like the lock"
    assert any(d.startswith("pip") for d in conda_deps)


def test_env_pip_section_installs_torch_then_the_locked_rest_and_the_checkout_editable():
    lines = env_pip_lines()
    assert lines == [f"-r {ROOT_VAR}/{TORCH_REQ}", f"-c {ROOT_VAR}/{LOCK}", f"-e {ROOT_VAR}"]


def test_env_pip_paths_are_absolute_and_exist():
    """Snakemake copies the env file to .snakemake/conda/, and conda runs pip from there: a path relative to envs/
    would not resolve. Every path goes through CIRCUITFLOW_ROOT (set by common.smk) and names a real file."""
    for line in env_pip_lines():
        option, path = line.split(maxsplit=1)
        assert path.startswith(ROOT_VAR), f"{ENV_FILE.name}: '{line}' is relative; start it with {ROOT_VAR}"
        target = ROOT / path.removeprefix(ROOT_VAR).lstrip("/")
        assert target.exists(), f"{ENV_FILE.name}: '{line}' names {target}, which does not exist"
        if option == "-e":
            assert (target / "pyproject.toml").is_file()


def test_env_records_the_digests_of_the_requirement_files_it_installs():
    """Snakemake hashes only the env file: without these lines a new lock would leave old envs in place."""
    recorded = dict(
        (name, digest) for digest, name in re.findall(r"^# ([0-9a-f]{64})  (\S+)$", ENV_FILE.read_text(), re.M)
    )
    assert sorted(recorded) == sorted([TORCH_REQ, LOCK])
    for name, digest in recorded.items():
        actual = hashlib.sha256((ROOT / name).read_bytes()).hexdigest()
        assert digest == actual, (f"{ENV_FILE.name} records sha256 {digest[:12]}… for {name}, the file's is "
                                  f"{actual[:12]}…: paste `sha256sum {TORCH_REQ} {LOCK}` into it so Snakemake "
                                  "rebuilds the env")


def test_env_pins_nothing_the_lock_disagrees_with():
    assert_pins_agree_with_lock(env_pip_lines(), ENV_FILE.name)


# --- container ---------------------------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1]) for line in text.splitlines()
            if line.strip()]


def pip_installs(run: str) -> list[list[str]]:
    """Arguments after ``pip install`` of each pip command in a RUN instruction's shell line."""
    words = (shlex.split(c) for c in re.split(r"&&|;", run))
    return [w[w.index("install") + 1:] for w in words if "pip" in w and "install" in w]


def package_installs() -> list[list[str]]:
    """Every pip install of the Dockerfile but pip's own upgrade, in order."""
    installs = [i for op, args in instructions() if op == "RUN" for i in pip_installs(args)]
    return [i for i in installs if not all(a.startswith(("--upgrade", "pip")) for a in i)]


def test_image_uses_the_locks_python():
    base = [args for op, args in instructions() if op == "FROM"]
    assert len(base) == 1 and re.fullmatch(rf"python:{re.escape(lock_python())}-slim-\w+", base[0]), base


def test_image_installs_torch_from_its_file_then_everything_else_under_the_lock():
    packages = package_installs()
    assert [option_values(i, "-r") for i in packages] == [[TORCH_REQ], []]
    assert all(option_values(i, "-c") == [LOCK] for i in packages), f"an install in {DOCKERFILE.name} is unconstrained"
    assert packages[-1][-1] == ".", "the last install must be the project"


def test_image_copies_what_its_installs_read_before_they_run():
    copied: set[str] = set()
    for op, args in instructions():
        if op == "COPY":
            *sources, _ = args.split()
            missing = [s for s in sources if not (ROOT / s).exists()]
            assert not missing, f"{DOCKERFILE.name} copies {missing}, which do not exist"
            copied.update(sources)
        for install in pip_installs(args) if op == "RUN" else []:
            needed = set(option_values(install, "-r") + option_values(install, "-c"))
            if "." in install:
                needed |= {"pyproject.toml", "README.md", "src"}
            assert needed <= copied, (f"{DOCKERFILE.name}: pip install {' '.join(install)} runs before "
                                      f"COPY {needed - copied}")


def test_build_context_sends_exactly_what_the_image_copies():
    allowed = {line[1:] for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")}
    copied = {s for op, args in instructions() if op == "COPY" for s in args.split()[:-1]}
    assert allowed == copied, (f"{DOCKERIGNORE.name} lets through {sorted(allowed)}, "
                               f"{DOCKERFILE.name} copies {sorted(copied)}")


def test_image_pins_nothing_the_lock_disagrees_with():
    assert_pins_agree_with_lock([a for i in package_installs() for a in i], DOCKERFILE.name)

def test_every_rule_that_runs_a_script_declares_the_env():
    """--sdm conda uses envs/circuitflow.yaml only in rules that declare it; any other script would run in whatever
    environment Snakemake itself runs in."""
    missing = []
    for smk in sorted((ROOT / "workflow/rules").glob("*.smk")):
        for block in re.split(r"^(?=(?:rule|checkpoint) \w+:)", smk.read_text(), flags=re.M)[1:]:
            if re.search(r"^    script:", block, re.M) and not re.search(r"^    conda:\n        ENV\n", block, re.M):
                missing.append(f"{smk.name}: {block.split(':')[0]}")
    assert not missing, f"rules without `conda: ENV` (workflow/rules/common.smk defines it): {missing}"


def test_the_workflow_sets_the_root_the_env_file_uses():
    common = (ROOT / "workflow/rules/common.smk").read_text()
    assert "os.environ.update(CIRCUITFLOW_ROOT=workflow.basedir)" in common, "common.smk must export CIRCUITFLOW_ROOT"
    snakefile = (ROOT / "Snakefile").read_text()
    assert 'container: f"{workflow.basedir}/containers/circuitflow.sif"' in snakefile, "Snakefile names no container"
