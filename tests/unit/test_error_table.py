"""One error vocabulary: every code the code base answers is in services/http/errors.py's
ERRORS with the status it is answered with, and the README and the OpenAPI documents show
that same table."""

from __future__ import annotations

import re
from pathlib import Path

from services.command.app import create_app as command_app
from services.core.settings import Settings
from services.gateway.openapi import merge_openapi
from services.http.errors import ERRORS, error_table_markdown
from services.query.app import create_app as query_app

ROOT = Path(__file__).resolve().parents[2]
# ApiError("code", ...) anywhere; the gateway's own answers: _json(send, status, {"error": ..
RAISED = re.compile(r'ApiError\(\s*"([a-z_]+)"')
GATEWAY_ANSWER = re.compile(r'_json\(send, (\d{3}), \{"error": "([a-z_]+)"')


def test_every_code_raised_is_in_the_table() -> None:
    raised: set[str] = set()
    for path in (ROOT / "services").rglob("*.py"):
        raised |= set(RAISED.findall(path.read_text()))
    assert raised, "the pattern no longer finds ApiError(...) calls"
    assert raised - ERRORS.keys() == set()


def test_the_gateways_own_answers_use_the_table_with_its_statuses() -> None:
    source = (ROOT / "services" / "gateway" / "app.py").read_text()
    answers = GATEWAY_ANSWER.findall(source)
    assert answers, "the pattern no longer finds the gateway's answers"
    for status, code in answers:
        assert code in ERRORS and ERRORS[code].status == int(status), (status, code)


def test_the_readme_shows_the_table() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "## Errors" in readme
    assert error_table_markdown() in readme, "README's Errors table is out of step with ERRORS"


def test_every_openapi_document_carries_the_table() -> None:
    settings = Settings()
    documents = {"command": command_app(settings).openapi_schema.to_schema(),
                 "query": query_app(settings).openapi_schema.to_schema()}
    for document in (*documents.values(), merge_openapi(documents)):
        assert error_table_markdown() in document["info"]["description"]
        error = document["components"]["schemas"]["ErrorBody"]["properties"]["error"]
        assert set(error["enum"]) == set(ERRORS)
