"""The compose stack for ``make test-compose``: compose.yaml as users run it, on the
offline stand-in images (tests/compose/compose.standins.yaml, built by
tests/compose/images/build.sh), brought up once for the session with
``docker compose up --wait`` and taken down with ``down -v`` at the end.

Where the services are is read from compose.yaml itself (its published ports, the
postgres password), so the tests follow the file users get."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
STANDINS_FILE = ROOT / "tests" / "compose" / "compose.standins.yaml"
# a failed run's logs, kept for reading after the stack is gone (CI prints the path)
LOG_DIR = ROOT / ".stack" / "compose-logs"
UP_TIMEOUT_S = 300
PROJECT = "els-compose-test"
# how long the session's build and up took, and the project image's size: the summary
SUMMARY: dict[str, str] = {}


def compose_config() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def standins_config() -> dict[str, Any]:
    data = yaml.safe_load(STANDINS_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def published(service: str, container_port: int) -> str:
    """``host:port`` where compose.yaml publishes ``container_port`` of ``service``."""
    for entry in compose_config()["services"][service].get("ports", []):
        host, host_port, target = str(entry).rsplit(":", 2)
        if int(target) == container_port:
            return f"{host}:{host_port}"
    raise AssertionError(f"compose.yaml publishes no port {container_port} of {service}")


@dataclass
class Compose:
    """``docker compose`` on compose.yaml + the stand-ins override, and what it started."""

    # not compose.yaml's `els`: a developer's own stack of that name is left alone
    project: str = PROJECT
    timings: dict[str, float] = field(default_factory=dict)
    is_down: bool = False

    def run(self, *args: str, timeout: float = 600, check: bool = True,
            ) -> subprocess.CompletedProcess[str]:
        argv = ["docker", "compose", "--project-name", self.project,
                "--project-directory", str(ROOT),
                "-f", str(COMPOSE_FILE), "-f", str(STANDINS_FILE), *args]
        res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv[2:])} exited {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def timed(self, name: str, *args: str, timeout: float = 600) -> None:
        start = time.monotonic()
        self.run(*args, timeout=timeout)
        self.timings[name] = round(time.monotonic() - start, 1)

    def container(self, service: str) -> dict[str, Any]:
        """``docker inspect`` of the service's one container (running or not)."""
        ids = self.run("ps", "-a", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: expected one container, found {ids}"
        out = subprocess.run(["docker", "inspect", ids[0]], capture_output=True, text=True,
                             check=True)
        info: dict[str, Any] = json.loads(out.stdout)[0]
        return info

    def health(self, service: str) -> str | None:
        health = self.container(service)["State"].get("Health")
        return None if health is None else str(health["Status"])

    def log_lines(self, service: str) -> list[str]:
        res = self.run("logs", "--no-color", "--no-log-prefix", service)
        return (res.stdout + res.stderr).splitlines()

    def log_records(self, service: str, since_line: int = 0) -> list[dict[str, Any]]:
        """The JSON lines of a service's log (the worker logs one per event), from line
        ``since_line`` on (the log of a container goes on over a stop and a start)."""
        out = []
        for line in self.log_lines(service)[since_line:]:
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def tail(self, service: str, lines: int = 40) -> str:
        return "\n".join(self.log_lines(service)[-lines:])

    def save_logs(self) -> Path:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        path = LOG_DIR / "compose.log"
        res = self.run("logs", "--no-color", "--timestamps", check=False)
        ps = self.run("ps", "-a", check=False)
        path.write_text(ps.stdout + "\n" + res.stdout + res.stderr, encoding="utf-8")
        return path

    def down(self) -> None:
        self.run("down", "-v", "--remove-orphans", "--timeout", "30")
        self.is_down = True


def http_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def ports_in_use() -> list[str]:
    """The host ports compose.yaml publishes (the core's) that something already holds."""
    busy = []
    for name, svc in compose_config()["services"].items():
        if svc.get("profiles"):
            continue
        for entry in svc.get("ports", []):
            host, port, _target = str(entry).rsplit(":", 2)
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((host, int(port)))
                except OSError:
                    busy.append(f"{name} {host}:{port}")
    return busy


@pytest.fixture(scope="session")
def compose(request: pytest.FixtureRequest) -> Iterator[Compose]:
    """The stack, built and up (every healthcheck healthy); down -v afterwards."""
    stack = Compose()
    stack.run("down", "-v", "--remove-orphans")  # what a crashed earlier run left
    busy = ports_in_use()
    assert not busy, f"compose.yaml's host ports are taken (another els stack?): {busy}"
    stack.timed("build", "build", timeout=900)
    try:
        stack.timed("up --wait", "up", "--wait", "--wait-timeout", str(UP_TIMEOUT_S),
                    timeout=UP_TIMEOUT_S + 60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlogs: {stack.save_logs()}") from None
    SUMMARY.update({name: f"{seconds} s" for name, seconds in stack.timings.items()})
    image = standins_config()["services"]["worker"]["image"]
    size = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", image],
                          capture_output=True, text=True, check=True).stdout
    SUMMARY[f"image {image}"] = f"{int(size) / 1e6:.0f} MB"
    yield stack
    if request.session.testsfailed:
        print(f"\ncompose logs of the failed run: {stack.save_logs()}")
    if not stack.is_down:
        stack.down()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARY:
        terminalreporter.write_line(
            "compose: " + ", ".join(f"{k} {v}" for k, v in SUMMARY.items()))
