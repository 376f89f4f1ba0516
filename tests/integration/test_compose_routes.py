"""The container deployment: docker-compose.yml has the whole system, and real nginx running
deploy/nginx.conf (pointed at the two services on loopback) routes reads to the query
service, writes to the command service, the UI to its files, and streams unbuffered, while
the services alone decide who is calling (signed-token mode: no gateway secret behind nginx).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec
import pytest
import yaml

from services.command.app import create_app as command_app
from services.core.settings import Settings
from services.query.app import create_app as query_app
from tests.integration.conftest import free_port, serve, wait_until
from workers.main import running_worker

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
COMPOSE_FILE = ROOT / "docker-compose.yml"
WEB_DIR = ROOT / "web"
JWT_SECRET = "compose-jwt-key-" + "k" * 60
TIMEOUT = 15.0


# ---- docker-compose.yml -------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # type: ignore[no-any-return]


def test_compose_has_the_whole_system(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "command", "query", "worker", "gateway"} <= set(
        services
    )
    for name in ("postgres", "redis", "command", "query", "gateway"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    for name in ("command", "query", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        # the services check tokens themselves: the setting must reach them
        assert "AUTH_JWT_SECRET" in services[name]["environment"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["gateway"]["depends_on"]["command"]["condition"] == "service_healthy"
    assert services["gateway"]["depends_on"]["query"]["condition"] == "service_healthy"
    # --scale worker=3 needs a worker without a fixed name or published port
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    # only the gateway is published: the services are reached through it
    assert [name for name, service in services.items() if "ports" in service] == ["gateway"]
    mounts = " ".join(services["gateway"]["volumes"])
    assert "deploy/nginx.conf" in mounts and "./web" in mounts


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_file_is_valid() -> None:
    client = _compose_client()
    if client is None:
        pytest.skip("no compose client (docker compose plugin or docker-compose) installed")
    result = subprocess.run([*client, "-f", str(COMPOSE_FILE), "config", "-q"],
                            capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr


# ---- real nginx in front of the real services --------------------------------------------


def _nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if found is None:
        pytest.skip("nginx is not installed (CI installs nginx-light)")
    return found


def loopback_conf(command: str, query: str, port: int, workdir: Path) -> str:
    """deploy/nginx.conf with compose's host names, port and paths pointed at loopback."""
    text = NGINX_CONF.read_text()
    text = re.sub(r"server command:\d+;", f"server {command.removeprefix('http://')};", text)
    text = re.sub(r"server query:\d+;", f"server {query.removeprefix('http://')};", text)
    text = text.replace("listen 8000;", f"listen 127.0.0.1:{port};")
    text = text.replace("pid /tmp/nginx.pid;", f"pid {workdir / 'nginx.pid'};")
    text = text.replace("/usr/share/nginx/html", str(WEB_DIR))
    for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):  # no root-owned dirs
        text = text.replace("http {", f"http {{\n    {temp}_temp_path {workdir / temp};", 1)
    assert "command:" not in text and "query:" not in text
    return text


@pytest.fixture(scope="module")
def front(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    nginx = _nginx()
    token_settings = msgspec.structs.replace(settings, auth_jwt_secret=JWT_SECRET)
    workdir = tmp_path_factory.mktemp("nginx")
    port = free_port()
    with ExitStack() as stack:
        stack.enter_context(running_worker(token_settings, threads=2))
        command = stack.enter_context(serve(command_app(token_settings)))
        query = stack.enter_context(serve(query_app(token_settings)))
        conf = workdir / "nginx.conf"
        conf.write_text(loopback_conf(command, query, port, workdir))
        checked = subprocess.run([nginx, "-t", "-c", str(conf), "-p", str(workdir)],
                                 capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stderr
        process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir),
                                    "-g", "daemon off;"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(up, timeout=20)
            yield base
        finally:
            process.terminate()
            process.wait(timeout=10)


def bearer(user: str) -> dict[str, str]:
    claims = {"sub": user, "exp": int(time.time()) + 300}
    return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"}


def test_nginx_routes_writes_reads_and_the_ui(front: str) -> None:
    signup = httpx.post(f"{front}/api/v1/users", json={"display_name": "N"}, timeout=TIMEOUT)
    assert signup.status_code == 201, signup.text  # command service, no token needed
    user = signup.json()["user_id"]
    accepted = httpx.post(f"{front}/api/v1/chat", json={"text": "through nginx"},
                          headers={**bearer(user), "Accept": "application/json"},
                          timeout=TIMEOUT)
    assert accepted.status_code == 202, accepted.text
    session_id, position = accepted.json()["session_id"], accepted.json()["position"]
    page = httpx.get(f"{front}/api/v1/sessions/{session_id}/messages", timeout=TIMEOUT,
                     headers={**bearer(user), "X-Min-Position": str(position)})
    assert page.status_code == 200, page.text  # query service
    assert page.json()["messages"][0]["content"] == "through nginx"
    renamed = httpx.put(f"{front}/api/v1/sessions/{session_id}/title", json={"title": "T"},
                        headers=bearer(user), timeout=TIMEOUT)
    assert renamed.status_code == 200, renamed.text
    assert httpx.get(f"{front}/readyz", timeout=TIMEOUT).status_code == 200
    ui = httpx.get(f"{front}/", timeout=TIMEOUT)
    assert ui.status_code == 200 and "<html" in ui.text.lower()
    assert httpx.get(f"{front}/ui/app.js", timeout=TIMEOUT).status_code == 200


def test_nginx_streams_the_reply_as_it_is_written(front: str) -> None:
    user = httpx.post(f"{front}/api/v1/users", json={}, timeout=TIMEOUT).json()["user_id"]
    kinds = []
    # a generous read time-out: on a loaded machine the reply may start late (heartbeats
    # come every 15 s)
    with httpx.stream("POST", f"{front}/api/v1/chat", json={"text": "stream it"},
                      headers=bearer(user), timeout=4 * TIMEOUT) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                kinds.append(line.split(":", 1)[1].strip())
                if kinds[-1] in ("done", "error"):
                    break
    assert kinds[0] == "session" and "delta" in kinds and kinds[-1] == "done", kinds


def test_behind_nginx_only_a_valid_token_says_who_is_calling(front: str) -> None:
    alice = httpx.post(f"{front}/api/v1/users", json={}, timeout=TIMEOUT).json()["user_id"]
    for method, path in (("GET", "/api/v1/sessions"), ("GET", "/api/v1/users/me"),
                         ("POST", "/api/v1/chat"), ("DELETE", f"/api/v1/sessions/{uuid.uuid4()}")):
        response = httpx.request(method, front + path, headers={"X-User-ID": alice},
                                 json={"text": "hi"} if method == "POST" else None,
                                 timeout=TIMEOUT)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"] == "token_required"
    mallory = httpx.post(f"{front}/api/v1/users", json={}, timeout=TIMEOUT).json()["user_id"]
    spoofed = {**bearer(mallory), "X-User-ID": alice, "Accept": "application/json"}
    accepted = httpx.post(f"{front}/api/v1/chat", json={"text": "mine"}, headers=spoofed,
                          timeout=TIMEOUT)
    assert accepted.status_code == 202, accepted.text
    me = httpx.get(f"{front}/api/v1/users/me", timeout=TIMEOUT,
                   headers={**spoofed, "X-Min-Position": str(accepted.json()["position"])})
    assert me.status_code == 200 and me.json()["user_id"] == mallory
