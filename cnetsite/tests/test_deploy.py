"""deploy/: the systemd units and the compose file are valid, and the env example is complete."""

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from django.conf import settings

ROOT = Path(settings.BASE_DIR)
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
ENV_EXAMPLE = DEPLOY / "cnet.env.example"

# Functions that read one environment variable named by their first argument.
ENV_READERS = {"env_str", "env_bool", "env_int", "env_float", "env_list", "settings_int", "getenv"}
# Not our code's reads, but documented in the example for the operator (read by libraries).
LIBRARY_VARIABLES = {"DOCKER_HOST"}
# cnetcli: the user's command line reads the user's environment (CNET_SERVER, CNET_TOKEN), not a host's.
SKIP_DIRS = {".venv", ".git", "var", "node_modules", "tests", "migrations", "__pycache__", "cnetcli"}


def test_there_is_a_unit_per_role_each_reading_the_environment_file():
    assert [unit.name for unit in UNITS] == [
        "cnet-agent.service", "cnet-beat.service", "cnet-control.service", "cnet-web.service"
    ]
    for unit in UNITS:
        text = unit.read_text()
        # Agent hosts get an environment of their own: no database URL, no secret key.
        env_file = "agent.env" if unit.name == "cnet-agent.service" else "cnet.env"
        assert f"EnvironmentFile=/etc/cnet/{env_file}" in text, unit.name
    assert "gunicorn cnetsite.wsgi" in (DEPLOY / "systemd/cnet-web.service").read_text()
    assert "worker -Q control" in (DEPLOY / "systemd/cnet-control.service").read_text()
    assert "celery -A cnetsite beat" in (DEPLOY / "systemd/cnet-beat.service").read_text()
    assert "manage.py runagent --config" in (DEPLOY / "systemd/cnet-agent.service").read_text()


def test_systemd_units_verify(tmp_path):
    """``systemd-analyze verify`` on copies whose /opt/cnet is this checkout, so every
    ExecStart= binary (gunicorn, celery, python in .venv) is checked to exist."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    venv = ROOT / ".venv" / "bin"
    if not (venv / "gunicorn").exists() or not (venv / "celery").exists():
        pytest.skip(f"{venv} lacks gunicorn/celery: the units' ExecStart= paths cannot be checked")
    copies = []
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/cnet", str(ROOT)))
        copies.append(str(copy))
    result = subprocess.run([analyze, "verify", *copies], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    if result.returncode != 0 and "Failed to" in output and "unit" not in output.lower():
        pytest.skip(f"systemd-analyze cannot run here: {output.strip()[:300]}")
    # It exits 0 on unknown keys and bad values; they show as lines naming the unit file.
    about_ours = [line for line in output.splitlines() if any(unit.name in line for unit in UNITS)]
    assert result.returncode == 0 and not about_ours, output


def compose_command() -> list[str] | None:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return command
    return None


def test_compose_file_is_valid():
    command = compose_command()
    if command is None:
        pytest.skip("neither the `docker compose` plugin nor `docker-compose` is installed")
    env = {**os.environ, "SECRET_KEY": "test-only", "POSTGRES_PASSWORD": "test-only"}
    result = subprocess.run([*command, "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=DEPLOY)
    assert result.returncode == 0, result.stdout + result.stderr
    # Required secrets are required: without them compose refuses instead of using a default.
    bare = {k: v for k, v in env.items() if k not in ("SECRET_KEY", "POSTGRES_PASSWORD")}
    refused = subprocess.run([*command, "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"],
                             capture_output=True, text=True, timeout=120, env=bare, cwd=DEPLOY)
    assert refused.returncode != 0


def test_compose_file_has_the_control_plane_state_broker_and_an_agent():
    """Checked without a compose binary too: the services, the build, the env they share."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "web", "control", "beat", "agent"} <= set(services)
    build = services["migrate"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert "pip install -r requirements.txt" in dockerfile
    for name in ("web", "control", "beat", "agent"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and env["CELERY_BROKER_URL"].startswith("redis://")
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "runagent" in services["agent"]["command"]


def env_reads_in_code() -> dict[str, str]:
    """Every environment variable our code reads (name → first file), found by parsing it."""
    found: dict[str, str] = {}
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if SKIP_DIRS & set(relative.parts[:-1]) or relative.name in ("conftest.py", "settings_test.py"):
            continue
        if relative.parts[0] == "bench":
            continue  # benchmarks set their own environment
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            name = _env_name(node)
            if name:
                found.setdefault(name, str(relative))
    return found


def _is_os_environ(node) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" and getattr(node.value, "id", "") == "os"


def _env_name(node) -> str | None:
    def literal(args):
        return args[0].value if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str) else None

    if isinstance(node, ast.Call):
        func = node.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if called in ENV_READERS:
            return literal(node.args)
        if isinstance(func, ast.Attribute) and func.attr in ("get", "setdefault") and _is_os_environ(func.value):
            return literal(node.args)
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_os_environ(node.value):
        return node.slice.value if isinstance(node.slice, ast.Constant) else None
    return None


def example_keys() -> set[str]:
    """KEY=value lines, and commented ``#KEY=default`` lines that document a default."""
    keys = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=", line)
        if match:
            keys.add(match.group(1))
    return keys


def test_the_scan_finds_what_settings_read():
    reads = env_reads_in_code()
    # A few known reads, one per kind of reader, so a broken scan cannot pass vacuously.
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "DEBUG", "CNET_HEARTBEAT_SECONDS", "ALLOWED_HOSTS",
                 "CNET_METRICS_PUBLIC", "CNET_CGROUP_ROOT", "WEB_CONCURRENCY", "DJANGO_SETTINGS_MODULE"):
        assert name in reads, name


def test_env_example_covers_every_variable_the_code_reads():
    reads = env_reads_in_code()
    missing = {name: where for name, where in reads.items() if name not in example_keys()}
    assert not missing, f"add these to deploy/cnet.env.example: {missing}"


def test_env_example_names_nothing_the_code_does_not_read():
    reads = set(env_reads_in_code())
    allowed = reads | LIBRARY_VARIABLES | {f"{name}_FILE" for name in reads} | {"PROMETHEUS_MULTIPROC_DIR"}
    stale = example_keys() - allowed
    assert not stale, f"deploy/cnet.env.example names variables nothing reads: {sorted(stale)}"


def test_env_example_parses_as_an_environment_file_with_production_values():
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", key) and " " not in value, line
            values[key] = value
    assert values["CNET_EMBEDDED"] == "false"
    assert values["DATABASE_URL"].startswith("postgres://")
    assert values["CELERY_BROKER_URL"].startswith("redis://")


def test_prometheus_example_scrapes_metrics_with_a_token():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["credentials_file"]


def test_the_agent_environment_names_the_control_plane_and_the_broker_but_no_database_or_secret():
    text = (DEPLOY / "agent.env.example").read_text()
    assigned = {line.split("=", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert {"CNET_SERVER_URL", "CELERY_BROKER_URL"} <= assigned
    assert not assigned & {"DATABASE_URL", "SECRET_KEY", "SECRET_KEY_FILE", "DATABASE_URL_FILE"}
