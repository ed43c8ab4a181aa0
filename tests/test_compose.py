"""compose.yaml and the Dockerfile stay in step with the code: every file they refer to
exists, every command runs a script that exists, and every ELS_* variable they set is
one the code actually reads (and the README documents)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from els_worker.cli import build_parser
from els_worker.config import settings_table

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
# the code that reads the ELS_* configuration
CODE_FILES = [ROOT / "els_migrate.py", *sorted((ROOT / "els_worker").glob("*.py"))]
ENV_NAME = re.compile(r"\bELS_[A-Z0-9_]+\b")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...] form
        return dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command")
    if cmd is None:
        return []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _code_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in CODE_FILES if p.exists())


def test_code_files_exist() -> None:
    for path in CODE_FILES:
        assert path.is_file(), f"{path.name} is missing: compose.yaml runs it"


def test_build_contexts_and_dockerfiles_exist() -> None:
    builds = 0
    for name, svc in _services().items():
        build = svc.get("build")
        if build is None:
            continue
        builds += 1
        if isinstance(build, str):
            build = {"context": build}
        context = (ROOT / build.get("context", ".")).resolve()
        assert context.is_dir(), f"{name}: build context {context} missing"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
    assert builds >= 1, "no service builds the project image"


def test_dockerfile_copy_sources_exist() -> None:
    dockerfile = ROOT / "Dockerfile"
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if not parts or parts[0].upper() not in ("COPY", "ADD"):
            continue
        args = [a for a in parts[1:] if not a.startswith("--")]
        for src in args[:-1]:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"


def test_bind_mounted_files_exist() -> None:
    for name, svc in _services().items():
        for vol in svc.get("volumes") or []:
            source = vol.get("source") if isinstance(vol, dict) else str(vol).split(":")[0]
            if source and source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: mounts missing {source}"


def test_images_built_here_are_built_before_use() -> None:
    services = _services()
    built = {svc.get("image") for svc in services.values() if svc.get("build")}
    for name, svc in services.items():
        image = svc.get("image")
        if svc.get("build") or not image or not str(image).endswith(":local"):
            continue
        assert image in built, f"{name}: image {image} is built by no service"


def test_commands_run_existing_scripts() -> None:
    checked = 0
    for name, svc in _services().items():
        cmd = _command(svc)
        if not cmd or not cmd[0].startswith("python"):
            continue
        if cmd[1:2] == ["-m"]:
            module = cmd[2].replace(".", "/")
            assert (ROOT / f"{module}.py").is_file() or (ROOT / module).is_dir(), (
                f"{name}: python -m {cmd[2]}: no such module"
            )
        else:
            assert (ROOT / cmd[1]).is_file(), f"{name}: runs {cmd[1]}, which does not exist"
        checked += 1
    assert checked >= 2, "expected the migrate and worker services to run python scripts"


@pytest.mark.parametrize("service", ["migrate", "worker"])
def test_worker_subcommands_exist(service: str) -> None:
    cmd = _command(_services()[service])
    assert cmd[:2] == ["python", "worker.py"], cmd
    assert build_parser().parse_args(cmd[2:]).command == cmd[2], (
        f"worker.py has no {cmd[2]!r} subcommand")


def test_depends_on_conditions_are_valid() -> None:
    services = _services()
    valid = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec.get("condition", "service_started")
            assert condition in valid, f"{name}: bad condition {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} needs a healthcheck"


def test_every_els_variable_in_compose_is_read_by_the_code() -> None:
    code = _code_text()
    names = {
        key for svc in _services().values() for key in _environment(svc) if key.startswith("ELS_")
    }
    assert names, "compose sets no ELS_* variable"
    unread = sorted(n for n in names if not re.search(rf"\b{n}\b", code))
    assert not unread, f"compose sets variables no code reads: {unread}"


def test_every_els_variable_the_code_reads_is_documented() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    names = set(ENV_NAME.findall(_code_text()))
    undocumented = sorted(n for n in names if n not in readme)
    assert not undocumented, f"README does not document: {undocumented}"


def test_readme_configuration_table_is_the_config_table() -> None:
    """One source of truth for the variables: README's table is els_worker.config's."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(ELS_[A-Z0-9_]+)` \| (.*?) \| (.*) \|$", readme, re.M)
    documented = [(n, "" if d == "(empty)" else d.strip("`"), t) for n, d, t in rows]
    assert documented == settings_table()


def _init_sql() -> str:
    return "\n".join(p.read_text(encoding="utf-8")
                     for p in sorted((ROOT / "compose" / "postgres-init").glob("*.sql")))


def _db_user(service: str) -> str:
    url = _environment(_services()[service])["ELS_DATABASE_URL"]
    return url.split("://", 1)[1].split(":", 1)[0].split("@", 1)[0]


def test_worker_runs_as_a_login_role_in_els_worker_only() -> None:
    user = _db_user("worker")
    assert user not in ("postgres", "els_migrator"), "the worker must not run as a superuser"
    grant = re.search(rf"CREATE ROLE {user} LOGIN\b(.*?);", _init_sql(), re.S)
    assert grant, f"compose/postgres-init creates no login role {user}"
    assert re.search(r"\bIN ROLE els_worker\s*$", grant.group(1).strip() + "\n", re.M)
    assert not re.search(r"SUPERUSER|CREATEROLE|CREATEDB|BYPASSRLS", grant.group(1))


def test_migrations_run_as_a_separate_role_that_may_create_roles() -> None:
    user = _db_user("migrate")
    assert user not in ("postgres", _db_user("worker"))
    grant = re.search(rf"CREATE ROLE {user} LOGIN\b(.*?);", _init_sql(), re.S)
    assert grant and "CREATEROLE" in grant.group(1) and "IN ROLE els_owner" in grant.group(1)
    assert "SUPERUSER" not in grant.group(1)
    assert re.search(rf"ALTER DATABASE els OWNER TO {user};", _init_sql())
