"""A throwaway one-node SLURM cluster on this machine, from Debian's packages (munge, slurmctld, slurmd, slurm-client),
for tests: its own munge key and socket, its own ``slurm.conf`` (this host as the only node, sized from ``nproc`` and
``/proc/meminfo``, no accounting, no cgroups) and two free ports, every file in one folder. Needs root.

    python -m tests.cluster.slurm FOLDER    # starts it, prints the SLURM_CONF line to export, stops on Ctrl-C

Tests use :func:`local_slurm`, a context manager that yields the environment (``SLURM_CONF``) clients need.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
# Where clients look when SLURM_CONF is unset and SYSTEM_CONF is missing (a configless node's cache): the SLURM
# executor's job step drops SLURM_CONF before its srun, so the cluster's config must be found here.
RUN_CONF_DIR = Path("/run/slurm/conf")
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel")
PARTITION = "debug"
START_TIMEOUT_S = 45.0


def missing_requirements() -> str | None:
    """Why a local cluster cannot start here (a missing program, or not root); None when it can."""
    missing = [p for p in (*DAEMONS, *CLIENTS) if shutil.which(p, path=f"{os.environ.get('PATH', '')}:/usr/sbin")
               is None]
    if missing:
        return f"SLURM/munge programs not installed: {', '.join(missing)} (Debian: slurmctld slurmd slurm-client munge)"
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd/munged needs root"
    if SYSTEM_CONF.exists():
        return f"{SYSTEM_CONF} exists (a real cluster's config): srun in test jobs would read it"
    if RUN_CONF_DIR.exists() and not RUN_CONF_DIR.is_symlink():
        return f"{RUN_CONF_DIR} exists (a configless node's cache): srun in test jobs would read it"
    return None


def node_size() -> tuple[int, int]:
    """This machine's CPUs (``nproc``: affinity, cgroup quota not counted) and memory in MiB (``MemTotal``)."""
    kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal:"))
    return len(os.sched_getaffinity(0)), kib // 1024


def _free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports nothing listens on now (the kernel's picks)."""
    socks = [socket.socket() for _ in range(n)]
    with ExitStack() as stack:
        for s in socks:
            stack.enter_context(closing(s))
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def slurm_conf(folder: Path, cpus: int, mem_mb: int, ports: list[int]) -> str:
    """The ``slurm.conf`` of a one-node cluster whose state, spool and logs live in ``folder``."""
    host = socket.gethostname().split(".")[0]
    return "\n".join([
        f"ClusterName=cf{ports[0]}",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        f"SlurmdPort={ports[1]}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={folder / 'munge/socket'}",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'log/slurmctld.log'}",
        f"SlurmdLogFile={folder / 'log/slurmd.log'}",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        "MinJobAge=3600",  # finished jobs stay visible to squeue (status checks) and scontrol (tests) for an hour
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def _wait(what: str, ready, log: Path, timeout: float = START_TIMEOUT_S) -> None:
    """Poll ``ready()`` until it is true; after ``timeout`` seconds raise with the end of ``log``."""
    end = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > end:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s; {log}:\n{tail}")
        time.sleep(0.3)


def _node_state(env: dict[str, str]) -> str:
    """The node's state as ``sinfo`` prints it (``idle``, ``down*``, ...), empty while slurmctld does not answer."""
    done = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True, timeout=20)
    return done.stdout.strip() if done.returncode == 0 else ""


@contextmanager
def _run_conf_link(folder: Path) -> Iterator[None]:
    """Point :data:`RUN_CONF_DIR` at ``folder`` (replacing a link a killed run left) while the cluster is up."""
    RUN_CONF_DIR.parent.mkdir(parents=True, exist_ok=True)
    if RUN_CONF_DIR.is_symlink():
        RUN_CONF_DIR.unlink()
    RUN_CONF_DIR.symlink_to(folder, target_is_directory=True)
    try:
        yield
    finally:
        if RUN_CONF_DIR.is_symlink() and RUN_CONF_DIR.resolve() == folder:
            RUN_CONF_DIR.unlink()


def _shutdown(procs: list[subprocess.Popen], env: dict[str, str]) -> None:
    """Cancel the jobs left (while slurmctld runs) and stop the daemons started, last first."""
    if len(procs) == len(DAEMONS) and procs[1].poll() is None:
        subprocess.run(["scancel", "--full", f"--partition={PARTITION}"], env=env, capture_output=True, timeout=20)
    for proc in reversed(procs):
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM a daemon this module started and wait for it (SIGKILL after 10 s)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def local_slurm(folder: Path) -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and slurmd in ``folder`` (a fresh, empty one), wait until the node is idle, yield a
    copy of ``os.environ`` with ``SLURM_CONF`` set; on exit cancel the jobs left and stop the three daemons."""
    folder = Path(folder).resolve()
    for sub in ("munge", "state", "spool", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "munge").chmod(0o700)
    cpus, mem_mb = node_size()
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, cpus, mem_mb, _free_ports(2)))
    env = {**os.environ, "SLURM_CONF": str(conf), "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin"}
    key = folder / "munge/munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    munge = folder / "munge"
    logs = folder / "log"
    procs: list[subprocess.Popen] = []
    with _run_conf_link(folder), ExitStack() as stack:
        stack.callback(_shutdown, procs, env)
        procs.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={munge / 'socket'}",
             f"--pid-file={munge / 'munged.pid'}", f"--log-file={logs / 'munged.log'}",
             f"--seed-file={munge / 'seed'}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        _wait("munged", (munge / "socket").exists, logs / "munged.log")
        with open(logs / "slurmctld.out", "w") as out:
            procs.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)], env=env, stdout=out,
                                          stderr=subprocess.STDOUT))
        _wait("slurmctld", lambda: _node_state(env) != "", logs / "slurmctld.log")
        with open(logs / "slurmd.out", "w") as out:
            procs.append(subprocess.Popen(["slurmd", "-D", "-f", str(conf), "-N", socket.gethostname().split(".")[0]],
                                          env=env, stdout=out, stderr=subprocess.STDOUT))
        _wait("slurmd (node idle)", lambda: _node_state(env) == "idle", logs / "slurmd.log")
        yield env


def main(argv: list[str] | None = None) -> None:
    """Start a cluster in the folder given on the command line and keep it up until Ctrl-C."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m tests.cluster.slurm FOLDER")
    reason = missing_requirements()
    if reason:
        raise SystemExit(f"error: {reason}")
    with local_slurm(Path(args[0])) as env:
        print(f"export SLURM_CONF={env['SLURM_CONF']}   # cluster up; Ctrl-C stops it", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
