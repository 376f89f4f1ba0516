"""docker-compose.yml's scale-out profile: a PostgreSQL streaming replica, RabbitMQ and
several workers, wired to the services by deploy/scale.env. Checked for its shape, and
resolved by the compose client where one is installed (docker compose or docker-compose)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCALE_ENV = ROOT / "deploy" / "scale.env"
SCALE_ONLY = {"postgres-replica", "rabbitmq"}


def _env_file() -> dict[str, str]:
    lines = (line.strip() for line in SCALE_ENV.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def _client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _resolved(*args: str) -> dict[str, Any]:
    client = _client()
    if client is None:
        pytest.skip("no compose client (docker compose plugin or docker-compose) installed")
    result = subprocess.run([*client, "-f", str(COMPOSE_FILE), *args, "config"],
                            capture_output=True, text=True, cwd=ROOT, check=False,
                            env={"PATH": "/usr/local/bin:/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)  # type: ignore[no-any-return]


def test_the_scale_pieces_start_only_with_the_profile() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for name in SCALE_ONLY:
        assert services[name]["profiles"] == ["scale"], name
        assert "healthcheck" in services[name], name
    assert all("profiles" not in s for n, s in services.items() if n not in SCALE_ONLY)
    assert services["postgres-replica"]["depends_on"]["postgres"]["condition"] == (
        "service_healthy")


def test_the_env_file_points_the_services_at_the_profiles_pieces() -> None:
    env = _env_file()
    assert env["COMPOSE_PROFILES"] == "scale"
    assert env["BROKER_URL"].startswith("amqp://") and "@rabbitmq:" in env["BROKER_URL"]
    assert "@postgres-replica:" in env["QUERY_DATABASE_URLS"]
    assert int(env["WORKERS"]) > 1


def test_without_the_profile_compose_resolves_the_one_node_system() -> None:
    config = _resolved()  # (`config` may list every service, active profile or not)
    assert config["services"]["worker"]["deploy"]["replicas"] == 1
    assert config["services"]["command"]["environment"]["BROKER_URL"] in ("", None)


def test_the_scale_profile_resolves_with_a_replica_rabbitmq_and_several_workers() -> None:
    config = _resolved("--env-file", str(SCALE_ENV))
    services = config["services"]
    assert SCALE_ONLY <= set(services)
    env = _env_file()
    assert services["worker"]["deploy"]["replicas"] == int(env["WORKERS"])
    for name in ("command", "query", "worker"):
        assert services[name]["environment"]["BROKER_URL"] == env["BROKER_URL"]
    assert services["query"]["environment"]["QUERY_DATABASE_URLS"] == (
        env["QUERY_DATABASE_URLS"])
    assert set(_resolved("--profile", "scale")["services"]) >= SCALE_ONLY
