"""Sign-in throttling (`limits`, moving windows in Redis): failed attempts are counted per
account and per client address; past either limit every attempt (even a right password)
is 429 with Retry-After until the window moves on. Per account stops guessing one
password; per address stops trying one common password on many accounts."""

from __future__ import annotations

import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from services.core.settings import Settings
from services.http.errors import ApiError

PER_ACCOUNT = RateLimitItemPerMinute(10, 15)  # 10 failures per account in 15 minutes
PER_ADDRESS = RateLimitItemPerMinute(50, 15)  # 50 failures per client address


def limits_url(redis_url: str) -> str:
    """`limits`' name for our Redis URL (the embedded Redis of `make run` is a unix socket)."""
    if redis_url.startswith("unix://"):
        return "async+redis+" + redis_url
    return "async+" + redis_url


class SignInThrottle:
    def __init__(self, settings: Settings) -> None:
        storage = RedisStorage(limits_url(settings.redis_url), implementation="redispy",
                               key_prefix=f"{settings.redis_prefix}limits:signin")
        self.limiter = MovingWindowRateLimiter(storage)

    async def check(self, account: str, address: str) -> None:
        """429 too_many_attempts if either limit is spent."""
        for item, key in ((PER_ACCOUNT, ("account", account)), (PER_ADDRESS, ("ip", address))):
            if not await self.limiter.test(item, *key):
                stats = await self.limiter.get_window_stats(item, *key)
                retry = max(1, int(stats.reset_time - time.time()) + 1)
                raise ApiError("too_many_attempts", "too many sign-in attempts; retry later",
                               {"retry_after": retry})

    async def failed(self, account: str, address: str) -> None:
        await self.limiter.hit(PER_ACCOUNT, "account", account)
        await self.limiter.hit(PER_ADDRESS, "ip", address)
