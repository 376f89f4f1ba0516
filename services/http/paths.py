"""Paths that mean something other than they say are refused (400 invalid_path) by the
gateway and by both services, before any routing or exemption looks at them: dot segments
(`/schema/../chat` would pass a `/schema` exemption and then be cleaned into `/chat` by an
HTTP client or a proxy), and encoded slashes, backslashes or dots (`%2F`, `%5C`, `%2E`),
which one hop decodes and another does not. What is forwarded is then the path exactly as
received."""

from __future__ import annotations

import re

# a segment that is `.` or `..` once %2E is read as a dot
_DOT_SEGMENT = re.compile(rb"(^|/)(\.|%2e){1,2}(/|$)", re.IGNORECASE)
_ENCODED = re.compile(rb"%(2f|5c|2e)", re.IGNORECASE)


def unsafe_path(raw_path: bytes) -> bool:
    path = raw_path.split(b"?", 1)[0]
    return (not path.startswith(b"/") or b"\\" in path or b"//" in path
            or _DOT_SEGMENT.search(path) is not None or _ENCODED.search(path) is not None)
