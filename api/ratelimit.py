"""Per-API-key request rate limits (fixed one-minute windows).

`RedisRateLimiter` counts in Redis so the limit holds across API processes; when Redis cannot
be reached it falls back to this process's `MemoryRateLimiter` rather than refusing service.
Callers pass a key *identity* (a hash of the key), never the key itself.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import redis

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60


class RateLimiter(Protocol):
    def hit(self, identity: str) -> float | None:
        """Count one request; return None if allowed, else seconds until the window resets."""
        ...


def _retry_after(now: float) -> float:
    return max(1.0, math.ceil(WINDOW_SECONDS - now % WINDOW_SECONDS))


@dataclass
class MemoryRateLimiter:
    """In-process limiter: exact within one process, per process across several."""

    limit_per_minute: int
    clock: Callable[[], float] = time.time
    _counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def hit(self, identity: str) -> float | None:
        now = self.clock()
        window = int(now // WINDOW_SECONDS)
        with self._lock:
            if len(self._counts) > 10_000:  # drop finished windows so the dict stays small
                self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
            seen_window, count = self._counts.get(identity, (window, 0))
            count = count + 1 if seen_window == window else 1
            self._counts[identity] = (window, count)
        return None if count <= self.limit_per_minute else _retry_after(now)


@dataclass
class RedisRateLimiter:
    """Shared limiter: INCR of `s4c:ratelimit:<identity>:<window>` with a two-window TTL."""

    client: redis.Redis
    limit_per_minute: int
    fallback: MemoryRateLimiter

    def hit(self, identity: str) -> float | None:
        now = time.time()
        name = f"s4c:ratelimit:{identity}:{int(now // WINDOW_SECONDS)}"
        try:
            pipe = self.client.pipeline()
            pipe.incr(name)
            pipe.expire(name, 2 * WINDOW_SECONDS)
            count = int(pipe.execute()[0])
        except (redis.RedisError, OSError) as exc:
            logger.warning("rate limiter: Redis unreachable (%s); counting in this process", exc)
            return self.fallback.hit(identity)
        return None if count <= self.limit_per_minute else _retry_after(now)
