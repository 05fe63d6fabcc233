"""Fixed-window rate limits in Redis, shared by every API replica."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class Limit:
    name: str
    max_hits: int
    window_seconds: int


LOGIN_PER_IP = Limit("login-ip", 30, 300)
LOGIN_FAILURES_PER_ACCOUNT = Limit("login-fail-account", 5, 900)
REGISTER_PER_IP = Limit("register-ip", 10, 3600)
RESET_PER_IP = Limit("reset-ip", 10, 3600)
RESET_PER_ACCOUNT = Limit("reset-account", 3, 3600)
TWO_FACTOR_PER_CHALLENGE = Limit("2fa-challenge", 5, 300)
REQUESTS_PER_USER = Limit("requests-user", 600, 60)


class RateLimiter:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    @staticmethod
    def _key(limit: Limit, subject: str) -> str:
        return f"rl:{limit.name}:{subject.lower()}"

    async def hit(self, limit: Limit, subject: str) -> int | None:
        """Count one hit; the seconds to wait when the limit is now exceeded, else None."""
        key = self._key(limit, subject)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, limit.window_seconds, nx=True)
            pipe.ttl(key)
            count, _, ttl = await pipe.execute()
        return max(int(ttl), 1) if int(count) > limit.max_hits else None

    async def blocked(self, limit: Limit, subject: str) -> int | None:
        """Without counting: the seconds to wait if the limit is already reached."""
        key = self._key(limit, subject)
        count = await self.redis.get(key)
        if count is None or int(count) < limit.max_hits:
            return None
        return max(int(await self.redis.ttl(key)), 1)

    async def reset(self, limit: Limit, subject: str) -> None:
        await self.redis.delete(self._key(limit, subject))
