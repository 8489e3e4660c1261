"""The cluster test's machinery: a one-node SLURM cluster (munge, slurmctld, slurmd, two fake GPUs
as gres), PostgreSQL on loopback and an MLflow server on it, all started here and stopped by PID.

Nothing is mocked: the Debian packages are installed by `.ci/cluster` (root, apt). A missing tool
fails the test (it never skips): `.ci/cluster` is the way to run it.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TOOLS = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo", "chromium")


class SetupError(RuntimeError):
    """A daemon did not come up: the message names it and its log file."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float, log: Path | None = None, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # not up yet
            value = None
        if value:
            return value
        time.sleep(poll)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise SetupError(f"{what} not ready after {timeout:.0f} s" + (f"; {log}:\n{tail}" if tail else ""))


def missing_tools() -> list[str]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        missing.append("postgresql (initdb)")
    return missing


class Daemons:
    """Every process started here, stopped in reverse order by its PID (process group for the
    MLflow server, whose workers are its children)."""

    def __init__(self, base: Path):
        self.base = base
        self.procs: list[tuple[str, subprocess.Popen, bool]] = []
        self.restore: list[tuple[Path, bytes | None]] = []  # system files to put back

    def place(self, path: Path, text: str) -> None:
        """Write a system file (remembering what was there, restored by stop())."""
        self.restore.append((path, path.read_bytes() if path.exists() else None))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def start(self, name: str, argv: list[str], user: str | None = None, group: bool = False,
              env: dict | None = None) -> subprocess.Popen:
        log = open(self.base / f"{name}.out", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                user=user, cwd=self.base, env=env, start_new_session=group)
        log.close()
        self.procs.append((name, proc, group))
        return proc

    def stop(self) -> list[str]:
        """Stop everything; returns the names of processes that needed SIGKILL."""
        killed = []
        for name, proc, group in reversed(self.procs):
            if proc.poll() is not None:
                continue
            self._signal(proc, group, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                killed.append(name)
            if group:  # the server's workers may outlive their parent
                time.sleep(1)
                self._signal(proc, group, signal.SIGKILL)
            elif proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self.procs.clear()
        for path, old in reversed(self.restore):
            if old is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(old)
        self.restore.clear()
        return killed

    @staticmethod
    def _signal(proc, group, sig):
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            pass


# ----------------------------------------------------------------------------------- munge
def start_munge(d: Daemons) -> None:
    """Reuse a running munged (its socket answers), else start one as the munge user."""
    if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
        return
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create"], check=False)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    d.start("munged", ["/usr/sbin/munged", "--foreground"], user="munge")
    wait_for("munged", lambda: subprocess.run("munge -n | unmunge", shell=True,
                                              capture_output=True).returncode == 0, 30, d.base / "munged.out")


# ----------------------------------------------------------------------------------- slurm
def slurm_conf(base: Path, host: str) -> Path:
    """slurm.conf + gres.conf for one node with 2 CPUs and 2 fake GPUs (character devices)."""
    sd = base / "slurm"
    for sub in ("state", "spool", "dev"):
        (sd / sub).mkdir(parents=True, exist_ok=True)
    for i in range(2):
        dev = sd / "dev" / f"fakegpu{i}"
        if not dev.exists():
            os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # like /dev/null: SLURM wants a device
    conf = sd / "slurm.conf"
    conf.write_text(f"""ClusterName=mhsa
SlurmctldHost={host}
SlurmUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
StateSaveLocation={sd}/state
SlurmdSpoolDir={sd}/spool
SlurmctldPidFile={sd}/slurmctld.pid
SlurmdPidFile={sd}/slurmd.pid
SlurmctldLogFile={sd}/slurmctld.log
SlurmdLogFile={sd}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
MinJobAge=600
KillWait=15
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=2
NodeName={host} CPUs=2 RealMemory=8000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    (sd / "gres.conf").write_text(f"NodeName={host} Name=gpu File={sd}/dev/fakegpu[0-1]\n")
    return conf


def start_slurm(d: Daemons, host: str) -> dict:
    conf = slurm_conf(d.base, host)
    # Job steps (`srun` inside a batch job, as the jobstep executor runs) read the default
    # location whatever SLURM_CONF the submitter had: install both files there, restored at stop.
    for name in ("slurm.conf", "gres.conf"):
        d.place(Path("/etc/slurm") / name, (conf.parent / name).read_text())
    env = {**os.environ, "SLURM_CONF": str(conf)}
    d.start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(conf)], env=env)
    wait_for("slurmctld", lambda: subprocess.run(["scontrol", "ping"], env=env, capture_output=True,
                                                 text=True).stdout.count("UP") > 0, 60,
             d.base / "slurm" / "slurmctld.log")
    d.start("slurmd", ["slurmd", "-D", "-f", str(conf)], env=env)

    def idle():
        state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True).stdout
        if "drain" in state or "down" in state:
            subprocess.run(["scontrol", "update", f"nodename={host}", "state=resume"], env=env,
                           capture_output=True)
        return state.strip().startswith("idle")

    wait_for("slurmd (node idle)", idle, 90, d.base / "slurm" / "slurmd.log", poll=1.0)
    return {"SLURM_CONF": str(conf)}


# ------------------------------------------------------------------------------ postgres
def start_postgres(d: Daemons) -> str:
    """A fresh cluster in a temp dir, on 127.0.0.1 only, run as the postgres user."""
    bindir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
    data, sock = d.base / "pgdata", d.base / "pgsock"
    for p in (data, sock):
        p.mkdir(exist_ok=True)
        shutil.chown(p, "postgres", "postgres")
    subprocess.run([bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   user="postgres", cwd=d.base, check=True, capture_output=True)
    port = free_port()
    d.start("postgres", [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                         "-k", str(sock)], user="postgres")
    wait_for("postgres", lambda: subprocess.run([bindir / "pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                                                capture_output=True).returncode == 0, 60, d.base / "postgres.out")
    subprocess.run([bindir / "psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
                    "CREATE DATABASE mlflow"], check=True, capture_output=True)
    return f"postgresql://postgres@127.0.0.1:{port}/mlflow"


def start_mlflow(d: Daemons, backend: str) -> str:
    port = free_port()
    artifacts = d.base / "mlflow-artifacts"
    artifacts.mkdir(exist_ok=True)
    d.start("mlflow-server", [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                              "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
                              "--port", str(port), "--workers", "1"], group=True)
    uri = f"http://127.0.0.1:{port}"
    wait_for("mlflow server", lambda: urllib.request.urlopen(uri + "/health", timeout=5).status == 200,
             180, d.base / "mlflow-server.out", poll=1.0)
    return uri
