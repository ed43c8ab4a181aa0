"""compose.yaml and the Dockerfile stay in step with the code: every file they refer to
exists, every command runs a script that exists, and every ELS_* variable they set is
one the code actually reads (and the README documents)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from els_worker.cli import build_parser
from els_worker.config import settings_table

ROOT = Path(__file__).resolve().parents[2]
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


# ---------------------------------------------------------------- monitoring services


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path of a service's bind mounts (short form)."""
    out: dict[str, Path] = {}
    for vol in service.get("volumes") or []:
        parts = str(vol).split(":")
        if len(parts) >= 2 and parts[0].startswith((".", "/")):
            out[parts[1]] = ROOT / parts[0]
    return out


def _host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where a file the container reads at ``container_path`` comes from on the host."""
    for target, source in sorted(_mounts(service).items(), key=lambda kv: -len(kv[0])):
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target.rstrip("/")) + 1 :]
    raise AssertionError(f"{container_path} is not mounted from the checkout")


@pytest.mark.parametrize(
    ("service", "image"), [("prometheus", "prom/prometheus:"), ("grafana", "grafana/grafana:")]
)
def test_monitoring_services_use_official_images(service: str, image: str) -> None:
    svc = _services()[service]
    assert str(svc.get("image", "")).startswith(image), svc.get("image")
    mounts = _mounts(svc)
    assert mounts, f"{service} mounts nothing from the checkout"
    for target, source in mounts.items():
        assert source.exists(), f"{service}: {target} comes from missing {source}"


def test_compose_prometheus_scrapes_the_worker_with_the_shipped_rules() -> None:
    services = _services()
    prom = services["prometheus"]
    cmd = _command(prom)
    config_path = next(a.split("=", 1)[1] for a in cmd if a.startswith("--config.file="))
    config = yaml.safe_load(_host_path(prom, config_path).read_text(encoding="utf-8"))
    # every rule file it loads is mounted, and the shipped alerts are among them
    rule_sources = [_host_path(prom, r).resolve() for r in config["rule_files"]]
    assert (ROOT / "monitoring" / "alerts.yml").resolve() in rule_sources
    # job els-worker (the alerts' job) scrapes the worker service on its metrics port
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    targets = [t for sc in jobs["els-worker"]["static_configs"] for t in sc["targets"]]
    port = _environment(services["worker"])["ELS_METRICS_PORT"]
    assert f"worker:{port}" in targets, targets


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """promtool check config on the compose config, with the container's rule paths
    pointed at the files compose mounts there."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool not installed: run scripts/bootstrap.sh (as root)"
    prom = _services()["prometheus"]
    config_path = next(
        a.split("=", 1)[1] for a in _command(prom) if a.startswith("--config.file=")
    )
    config = yaml.safe_load(_host_path(prom, config_path).read_text(encoding="utf-8"))
    config["rule_files"] = [str(_host_path(prom, r)) for r in config["rule_files"]]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config), encoding="utf-8")
    res = subprocess.run([promtool, "check", "config", str(local)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_compose_grafana_provisions_the_datasource_and_dashboard() -> None:
    grafana = _services()["grafana"]
    prov = _host_path(grafana, "/etc/grafana/provisioning")
    datasources = [
        ds
        for f in sorted((prov / "datasources").glob("*.yml"))
        for ds in yaml.safe_load(f.read_text(encoding="utf-8"))["datasources"]
    ]
    assert any(ds["url"] == "http://prometheus:9090" for ds in datasources), datasources
    providers = [
        p
        for f in sorted((prov / "dashboards").glob("*.yml"))
        for p in yaml.safe_load(f.read_text(encoding="utf-8"))["providers"]
    ]
    assert providers, "no dashboard provider"
    dashboards = [
        d for p in providers for d in _host_path(grafana, p["options"]["path"]).glob("*.json")
    ]
    assert dashboards, "the provider's folder holds no dashboard"
    # every panel queries a datasource that is provisioned
    uids = {ds["uid"] for ds in datasources}
    for path in dashboards:
        for panel in json.loads(path.read_text(encoding="utf-8"))["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] in uids, (path.name, panel["title"])
    home = _environment(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert _host_path(grafana, home).is_file(), home


# ---------------------------------------------------------------- make test-compose


STANDINS = ROOT / "tests" / "compose" / "compose.standins.yaml"


def _standins() -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(STANDINS.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and set(data) == {"services"}, "an override of services only"
    return data["services"]


def _dockerfile_args() -> dict[str, str]:
    """ARG NAME=default lines of the Dockerfile."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))


def test_grafana_alone_is_in_a_profile() -> None:
    """`docker compose up` starts the core; Grafana (no offline image) joins with
    --profile grafana, documented in compose.yaml's header and the README."""
    for name, svc in _services().items():
        assert svc.get("profiles", []) == (["grafana"] if name == "grafana" else []), name
    assert "--profile grafana" in COMPOSE.read_text(encoding="utf-8")
    assert "--profile grafana" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_standins_override_changes_only_image_names() -> None:
    services = _services()
    python_arg = next(k for k, v in _dockerfile_args().items() if v.startswith("python:"))
    project_image = services["worker"]["image"]  # built here: renamed, not replaced
    for name, svc in _standins().items():
        assert name in services, f"the override names unknown service {name}"
        if "build" in services[name]:
            assert set(svc) == {"image", "build"}, f"{name}: the override changes {sorted(svc)}"
            assert svc["build"] == {"args": {python_arg: svc["build"]["args"][python_arg]}}
            assert str(svc["build"]["args"][python_arg]).startswith("els-standin/")
        else:
            assert set(svc) == {"image"}, f"{name}: the override changes {sorted(svc)}"
        if services[name]["image"] == project_image:
            assert svc["image"].split(":")[0] == project_image.split(":")[0], svc
            assert svc["image"] != project_image, "a developer's image would be overwritten"
        else:
            assert str(svc["image"]).startswith("els-standin/"), svc["image"]
    # every public image the core pulls has a stand-in, tagged as its original where the
    # version is the same (PostgreSQL 15, Kafka 4.1.1, Python 3.11)
    for name, svc in services.items():
        if svc.get("profiles") or "build" in svc or str(svc.get("image", "")).endswith(":local"):
            continue
        assert name in _standins(), f"{name} ({svc['image']}) has no stand-in"
    for name in ("postgres", "kafka"):
        official_tag = services[name]["image"].rsplit(":", 1)[1]
        assert _standins()[name]["image"].endswith(":" + official_tag), name
    default_python = _dockerfile_args()[python_arg]
    standin_python = _standins()["migrate"]["build"]["args"][python_arg]
    assert standin_python.rsplit(":", 1)[1] == default_python.rsplit(":", 1)[1]


def test_standin_images_have_a_build_directory() -> None:
    images = ROOT / "tests" / "compose" / "images"
    build = (images / "build.sh").read_text(encoding="utf-8")
    names: set[str] = set()
    for svc in _standins().values():
        names.update(str(v) for v in svc.get("build", {}).get("args", {}).values())
        names.add(str(svc["image"]))
    names = {n for n in names if n.startswith("els-standin/")}
    assert len(names) == 4, names  # python, postgres, kafka, prometheus
    for image in names:
        name = image.split("/", 1)[1].split(":", 1)[0]
        assert (images / name / "Dockerfile").is_file(), f"no tests/compose/images/{name}"
        assert f"build {image} " in build, f"build.sh does not build {image}"


def test_kafka_standin_runs_the_stacks_kafka() -> None:
    """The stand-in's pom inherits the local stack's (same Kafka, same jars) and the
    version is the one compose.yaml names."""
    pom = (ROOT / "tests" / "compose" / "images" / "kafka" / "pom.xml").read_text(
        encoding="utf-8")
    relative = re.search(r"<relativePath>(.*?)</relativePath>", pom)
    assert relative, "the stand-in pom has no parent"
    parent = (ROOT / "tests" / "compose" / "images" / "kafka" / relative.group(1)).resolve()
    assert parent == (ROOT / "scripts" / "kafka" / "pom.xml").resolve()
    version = re.search(r"<kafka.version>(.*?)</kafka.version>", parent.read_text("utf-8"))
    assert version and _services()["kafka"]["image"] == f"apache/kafka:{version.group(1)}"


def test_published_ports_are_on_loopback_only() -> None:
    for name, svc in _services().items():
        for port in svc.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_long_running_services_have_healthchecks() -> None:
    for name, svc in _services().items():
        if svc.get("restart") == "no" or svc.get("profiles"):
            continue  # the one-shot migrate; grafana, outside the core
        hc = svc.get("healthcheck")
        assert hc and not hc.get("disable") and hc.get("test"), f"{name} has no healthcheck"


def test_worker_image_is_non_root_with_a_healthcheck_and_exec_form_cmd() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()]
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), users
    assert any(ln.startswith("HEALTHCHECK ") for ln in lines)
    cmd = [ln for ln in lines if ln.startswith("CMD ")]
    # exec form: python is PID 1 and receives docker stop's SIGTERM itself
    assert cmd and json.loads(cmd[-1][4:])[0] == "python", cmd


def _dockerignored(path: str) -> bool:
    """Whether .dockerignore leaves ``path`` (relative, top level) out of the context:
    the last pattern that matches decides (Docker's rule)."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_local_state_venv_and_tests_out() -> None:
    for path in (".stack", ".venv", ".git", "tests", "testkit", "chaos", "bench", "docs"):
        assert _dockerignored(path), f".dockerignore lets {path} into the build context"
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts and parts[0] == "COPY":
            for src in [a for a in parts[1:] if not a.startswith("--")][:-1]:
                assert not _dockerignored(src.rstrip("/")), f"Dockerfile copies ignored {src}"
