"""The run's own services and processes: a private copy of scripts/stack.sh (single node
or HA), the worker processes it supervises, and which worker holds a database session."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from chaos.config import (
    ROOT,
)
from testkit.stack import stack_env
from testkit.worker import spawn


class PrivateStack:
    """scripts/stack.sh, copied under .stack/chaos-<run id>/ so that it manages its own
    cluster, broker, ports and data, private to one run (two runs in one checkout do
    not meet); the Kafka jars and the venv are shared by links. ``remove()`` deletes
    it after the run."""

    def __init__(self, name: str, log_path: Path, topology: str = "single") -> None:
        self.topology = topology
        self.root = ROOT / ".stack" / f"chaos-{name}"
        self.script = self.root / "scripts" / "stack.sh"
        self.log_path = log_path

    def prepare(self) -> None:
        scripts = self.root / "scripts"
        if scripts.exists():
            shutil.rmtree(scripts)
        shutil.copytree(ROOT / "scripts", scripts, ignore=shutil.ignore_patterns("__pycache__"))
        venv = self.root / ".venv"
        if not venv.exists():
            venv.symlink_to(ROOT / ".venv")
        libs = ROOT / ".stack" / "kafka" / "libs"
        mine = self.root / ".stack" / "kafka"
        if libs.is_dir() and not (mine / "libs").exists():
            mine.mkdir(parents=True, exist_ok=True)
            (mine / "libs").symlink_to(libs)
            shutil.copy(ROOT / ".stack" / "kafka" / "libs.stamp", mine / "libs.stamp")

    def remove(self) -> None:
        for pg in (self.root / ".stack" / "pg", self.root / ".stack" / "ha" / "pg"):
            if pg.is_symlink():  # stack.sh put the cluster elsewhere (see pg_prepare_dir)
                shutil.rmtree(pg.resolve(), ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def argv(self, command: str) -> list[str]:
        return [str(self.script), *(["--ha"] if self.topology == "ha" else []),
                *command.split()]

    def run(self, command: str) -> None:
        with self.log_path.open("a") as out:
            out.write(f"--- {datetime.now(UTC).isoformat()} stack.sh {command}\n")
            out.flush()
            subprocess.run(self.argv(command), check=True, stdout=out, stderr=out,
                           stdin=subprocess.DEVNULL)

    def output(self, command: str) -> str:
        """stdout of a stack.sh command (its log lines go to the stack log)."""
        with self.log_path.open("a") as err:
            err.write(f"--- {datetime.now(UTC).isoformat()} stack.sh {command}\n")
            err.flush()
            return subprocess.run(self.argv(command), check=True, stdout=subprocess.PIPE,
                                  stderr=err, text=True, stdin=subprocess.DEVNULL).stdout.strip()

    def env(self) -> dict[str, str]:
        return stack_env(self.script, ha=self.topology == "ha", start=False)


@dataclass
class WorkerSlot:
    index: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    killed_pids: set[int] = field(default_factory=set)
    unexpected_exits: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as out:
            out.write(f"--- start #{self.starts} at {datetime.now(UTC).isoformat()}\n".encode())
            out.flush()
            self.proc = spawn(self.env, out, new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> bool:
        if not self.alive():
            return False
        assert self.proc is not None
        self.killed_pids.add(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        return True

    def check_exit(self) -> int | None:
        """The exit code if the process ended on its own (not by our SIGKILL)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        if self.proc.pid in self.killed_pids:
            return None
        code = self.proc.returncode
        self.killed_pids.add(self.proc.pid)  # report once
        self.unexpected_exits.append(code)
        return code

    def stop(self, timeout: float = 60.0) -> int | None:
        if not self.alive():
            return None
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            return -9


def pg_client_ports(pid: int, pg_port: int) -> list[int]:
    """Local ports of the TCP connections process ``pid`` holds to ``pg_port`` (Linux
    /proc), i.e. the ``client_port`` of its backends in pg_stat_activity."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return []
    ports = []
    for line in lines:
        parts = line.split()
        local, remote, inode = parts[1], parts[2], parts[9]
        if inode in inodes and int(remote.split(":")[1], 16) == pg_port:
            ports.append(int(local.split(":")[1], 16))
    return ports
