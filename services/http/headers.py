"""Browser hardening: the security headers on every answer, from the gateway (UI and API)
and from both services (API, whatever fronts them; nginx adds the same to the UI).

- Content-Security-Policy: the UI loads only its own files (`default-src 'self'`), the API
  answers are data and load nothing (`default-src 'none'`); neither may be framed
  (`frame-ancestors 'none'`, and X-Frame-Options for older browsers).
- Referrer-Policy no-referrer: session ids in URLs never leave in a Referer.
- X-Content-Type-Options nosniff.
- Strict-Transport-Security, only on answers served over HTTPS (the request's scheme, or
  X-Forwarded-Proto from the proxy in front): over plain HTTP it would mean nothing.
"""

from __future__ import annotations

UI_CSP = ("default-src 'self'; base-uri 'none'; form-action 'self'; object-src 'none'; "
          "frame-ancestors 'none'")
API_CSP = "default-src 'none'; frame-ancestors 'none'"
HSTS = "max-age=31536000; includeSubDomains"
_COMMON = [(b"referrer-policy", b"no-referrer"), (b"x-content-type-options", b"nosniff"),
           (b"x-frame-options", b"DENY")]


def security_headers(*, ui: bool, https: bool) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-security-policy", (UI_CSP if ui else API_CSP).encode()), *_COMMON]
    if https:
        headers.append((b"strict-transport-security", HSTS.encode()))
    return headers


def served_over_https(scope: dict) -> bool:  # type: ignore[type-arg]
    if scope.get("scheme") == "https":
        return True
    return any(k.lower() == b"x-forwarded-proto" and v.strip().lower() == b"https"
               for k, v in scope.get("headers", []))


def add_missing(message_headers: list[tuple[bytes, bytes]],
                extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers with `extra` added where the answer did not set its own."""
    present = {k.lower() for k, _ in message_headers}
    return [*message_headers, *((k, v) for k, v in extra if k not in present)]
