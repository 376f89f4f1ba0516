"""The container deployment routes every API route to the service that serves it.

deploy/nginx.conf is parsed (the subset of nginx it uses) and asked where each route the
command and query apps expose (their OpenAPI documents) would go; docker-compose.yml is
checked for the shape the deployment promises and validated by the compose client where
one is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.command.app import create_app as command_app
from services.core.settings import Settings
from services.query.app import create_app as query_app

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
COMPOSE_FILE = ROOT / "docker-compose.yml"
SAMPLE_ID = "0b9e8e4e-6b7a-4a55-9d3c-3f1f0c8a2b11"

# The public contract (ARCHITECTURE.md and the issue): these must exist and route right,
# whatever else the apps grow.
CONTRACT: list[tuple[str, str, str]] = [
    ("POST", "/api/v1/users", "command"),
    ("POST", "/api/v1/chat", "command"),
    ("PUT", "/api/v1/sessions/{session_id}/title", "command"),
    ("DELETE", "/api/v1/sessions/{session_id}", "command"),
    ("POST", "/api/v1/sessions/{session_id}/stop", "command"),
    ("POST", "/chat", "command"),  # the legacy endpoint
    ("GET", "/api/v1/sessions", "query"),
    ("GET", "/api/v1/sessions/{session_id}/messages", "query"),
    ("GET", "/api/v1/sessions/{session_id}/stream", "query"),
    ("GET", "/api/v1/users/me", "query"),
]


# ---- a small reader for the nginx configuration language --------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def find(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]


_TOKEN = re.compile(r"""'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|([{};])|([^\s{};'"#]+)|(#[^\n]*)""")


def parse_nginx(text: str) -> Directive:
    tokens: list[str] = []
    for m in _TOKEN.finditer(text):
        single, double, punct, word, comment = m.groups()
        if comment is not None:
            continue
        tokens.append(next(t for t in (single, double, punct, word) if t is not None))
    root = Directive("main", [], [])
    stack = [root]
    words: list[str] = []
    for token in tokens:
        if token == ";":
            stack[-1].block.append(Directive(words[0], words[1:]))  # type: ignore[union-attr]
            words = []
        elif token == "{":
            block = Directive(words[0], words[1:], [])
            stack[-1].block.append(block)  # type: ignore[union-attr]
            stack.append(block)
            words = []
        elif token == "}":
            assert not words, f"unterminated directive {words}"
            stack.pop()
        else:
            words.append(token)
    assert len(stack) == 1 and not words, "unbalanced braces in nginx.conf"
    return root


@dataclass
class Router:
    """Where nginx sends (method, path): an upstream name, "static", or "nginx" (answered by
    nginx itself)."""

    maps: dict[str, dict[str, str]] = field(default_factory=dict)  # $var -> method -> value
    upstreams: set[str] = field(default_factory=set)
    locations: list[Directive] = field(default_factory=list)

    @classmethod
    def from_conf(cls, conf: Directive) -> Router:
        (http,) = conf.find("http")
        router = cls()
        for m in http.find("map"):
            source, variable = m.args
            assert source == "$request_method", "only method maps are understood"
            router.maps[variable] = {d.name: d.args[0] for d in m.block or []}
        router.upstreams = {u.args[0] for u in http.find("upstream")}
        (server,) = http.find("server")
        router.locations = server.find("location")
        for loc in router.locations:
            assert len(loc.args) == 1 or loc.args[0] == "=", f"unsupported location {loc.args}"
        return router

    def location_for(self, path: str) -> Directive:
        exact = [loc for loc in self.locations if loc.args[0] == "=" and loc.args[1] == path]
        if exact:
            return exact[0]
        prefixes = [loc for loc in self.locations
                    if len(loc.args) == 1 and path.startswith(loc.args[0])]
        assert prefixes, f"no location matches {path}"
        return max(prefixes, key=lambda loc: len(loc.args[0]))

    def target(self, method: str, path: str) -> str:
        loc = self.location_for(path)
        if loc.find("return"):
            return "nginx"
        if loc.find("root") or loc.find("alias"):
            return "static"
        (proxy,) = loc.find("proxy_pass")
        upstream = proxy.args[0].removeprefix("http://").split("/", 1)[0]
        if upstream.startswith("$"):
            table = self.maps[upstream]
            upstream = table.get(method, table["default"])
        assert upstream in self.upstreams, f"proxy_pass to undeclared upstream {upstream}"
        return upstream


@pytest.fixture(scope="module")
def router() -> Router:
    return Router.from_conf(parse_nginx(NGINX_CONF.read_text()))


@pytest.fixture(scope="module")
def app_routes() -> dict[str, set[tuple[str, str]]]:
    """service -> {(METHOD, path template)} from each app's OpenAPI document."""
    settings = Settings.from_env({})
    routes: dict[str, set[tuple[str, str]]] = {}
    for name, factory in (("command", command_app), ("query", query_app)):
        schema: dict[str, Any] = factory(settings).openapi_schema.to_schema()
        routes[name] = {
            (method.upper(), path)
            for path, item in schema["paths"].items()
            for method in item
            if method in {"get", "head", "post", "put", "patch", "delete"}
        }
    return routes


def concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", SAMPLE_ID, template)


def test_every_route_the_apps_expose_reaches_its_service(
    router: Router, app_routes: dict[str, set[tuple[str, str]]]
) -> None:
    wrong = []
    for service, routes in app_routes.items():
        for method, path in sorted(routes):
            # A route both services have (their health endpoints) may go to either; nginx
            # answers /healthz itself.
            allowed = {s for s, r in app_routes.items() if (method, path) in r}
            if path == "/healthz":
                allowed.add("nginx")
            got = router.target(method, concrete(path))
            if got not in allowed:
                wrong.append(f"{method} {path}: nginx sends it to {got}, served by {service}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("method", "path", "service"), CONTRACT)
def test_the_contract_routes_go_to_the_right_service(
    router: Router, method: str, path: str, service: str
) -> None:
    assert router.target(method, concrete(path)) == service


@pytest.mark.parametrize(("method", "path", "service"), CONTRACT)
def test_the_apps_expose_the_contract_routes(
    app_routes: dict[str, set[tuple[str, str]]], method: str, path: str, service: str
) -> None:
    assert (method, path) in app_routes[service], f"{service} does not expose {method} {path}"


def test_the_ui_is_served_as_static_files(router: Router) -> None:
    assert router.target("GET", "/") == "static"
    assert router.target("GET", "/ui/app.js") == "static"
    for name in ("index.html", "app.js", "style.css"):
        assert (ROOT / "web" / name).is_file()


def test_streams_are_not_buffered() -> None:
    conf = parse_nginx(NGINX_CONF.read_text())
    (http,) = conf.find("http")
    (server,) = http.find("server")
    settings = {d.name: d.args for d in server.block or [] if d.block is None}
    assert settings["proxy_buffering"] == ["off"]
    assert settings["proxy_http_version"] == ["1.1"]
    # an open stream idles between heartbeats: the read timeout must outlast them
    assert settings["proxy_read_timeout"][0].endswith(("h", "m"))


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
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["gateway"]["depends_on"]["command"]["condition"] == "service_healthy"
    assert services["gateway"]["depends_on"]["query"]["condition"] == "service_healthy"
    # --scale worker=3 needs a worker without a fixed name or published port
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
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


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if nginx is None:
        pytest.skip("nginx is not installed")
    # Outside compose the upstream host names do not resolve: point them at loopback.
    text = re.sub(r"server (command|query):(\d+)", r"server 127.0.0.1:\2", NGINX_CONF.read_text())
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    result = subprocess.run([nginx, "-t", "-c", str(conf), "-p", str(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
