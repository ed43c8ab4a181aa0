"""Where the services are: the local stack of ``scripts/stack.sh`` (started when it is
not running), or services started some other way (``ELS_TEST_EXTERNAL_STACK=1`` with
``ELS_PG_ADMIN_URL`` and ``ELS_KAFKA_BOOTSTRAP``, e.g. compose)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STACK_SH = ROOT / "scripts" / "stack.sh"


@dataclass(frozen=True)
class Stack:
    """Connection details of the running stack."""

    admin_url: str  # superuser URL of the maintenance database `postgres`
    database_url: str  # the `els` database (make migrate / make demo)
    kafka_bootstrap: str
    # every variable the stack exports (ELS_PROMETHEUS_URL, ports, ...), for os.environ
    env: dict[str, str] = field(default_factory=dict, compare=False)

    def url_for(self, dbname: str) -> str:
        """URL of database ``dbname`` on the same server, as superuser."""
        return self.admin_url.rsplit("/", 1)[0] + "/" + dbname


def parse_env(text: str) -> dict[str, str]:
    """The ``export NAME=value`` lines of ``scripts/stack.sh env`` as a dict."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value.strip("'\"")
    return env


def stack_env(script: Path = STACK_SH, *, ha: bool = False, start: bool = True) -> dict[str, str]:
    """``script [--ha] env``, after ``up`` when ``start`` and ``status`` says it is down."""
    argv = [str(script), *(["--ha"] if ha else [])]
    if start and subprocess.run([*argv, "status"], capture_output=True).returncode != 0:
        subprocess.run([*argv, "up"], check=True)
    out = subprocess.run([*argv, "env"], check=True, capture_output=True, text=True)
    return parse_env(out.stdout)


def discover() -> Stack:
    """The services to test against (see the module's docstring)."""
    if os.environ.get("ELS_TEST_EXTERNAL_STACK") == "1":
        admin = os.environ["ELS_PG_ADMIN_URL"]
        env = {
            "ELS_PG_ADMIN_URL": admin,
            "ELS_DATABASE_URL": os.environ.get(
                "ELS_DATABASE_URL", admin.rsplit("/", 1)[0] + "/els"),
            "ELS_KAFKA_BOOTSTRAP": os.environ["ELS_KAFKA_BOOTSTRAP"],
        }
    else:
        env = stack_env()
    return Stack(admin_url=env["ELS_PG_ADMIN_URL"], database_url=env["ELS_DATABASE_URL"],
                 kafka_bootstrap=env["ELS_KAFKA_BOOTSTRAP"], env=env)
