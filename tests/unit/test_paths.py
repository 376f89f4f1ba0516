"""The paths the gateway and the services refuse before routing."""

import pytest

from services.http.paths import unsafe_path


@pytest.mark.parametrize("path", [
    b"/schema/../chat", b"/schema/..", b"/./api/v1/chat", b"/schema/%2e%2e/chat",
    b"/schema/%2E./chat", b"/api/v1/sessions%2Fx", b"/api/v1%5Cchat", b"/a\\b",
    b"//api/v1/chat", b"api/v1/chat",
])
def test_refused(path: bytes) -> None:
    assert unsafe_path(path)


@pytest.mark.parametrize("path", [
    b"/api/v1/chat", b"/schema/openapi.json", b"/api/v1/sessions/3f6c/stream?x=../y",
    b"/ui/app.js", b"/", b"/api/v1/users/me", b"/a..b/c.d", b"/api/v1/x%20y",
])
def test_accepted(path: bytes) -> None:
    assert not unsafe_path(path)
