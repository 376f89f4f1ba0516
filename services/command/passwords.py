"""Passwords: NIST SP 800-63B rules and argon2id hashes (argon2-cffi's defaults, RFC 9106's
second recommended parameter set). Hashing is slow on purpose, so it runs in a thread."""

from __future__ import annotations

import asyncio
from functools import cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from services.http.errors import ApiError

MIN_LENGTH = 8  # 800-63B 5.1.1.2: at least 8; no composition rules
MAX_LENGTH = 256  # long passphrases welcome; the cap only bounds the hashing work
COMMON_PASSWORDS = Path(__file__).parent / "data" / "common_passwords.txt"

_hasher = PasswordHasher()  # argon2id
# Checked against when the e-mail is unknown, so that answer takes as long as a wrong
# password (the answers are the same; their timing must not differ either).
_DUMMY_HASH = _hasher.hash("not-a-password-anyone-has")


@cache
def common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS.read_text(encoding="utf-8").splitlines()
    return frozenset(line.lower() for line in lines if line and not line.startswith("#"))


def check_policy(password: str) -> None:
    """422 weak_password unless 800-63B would accept it: length, and not a common one."""
    if len(password) < MIN_LENGTH:
        raise ApiError("weak_password", f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise ApiError("weak_password", f"a password has at most {MAX_LENGTH} characters")
    if password.lower() in common_passwords():
        raise ApiError("weak_password", "that password is one of the most common ones")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True if it matches; an unknown account (None) costs the same and is False."""
    return await asyncio.to_thread(_verify, password_hash, password)


def _verify(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)
