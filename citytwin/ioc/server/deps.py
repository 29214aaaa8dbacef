"""Who is calling: API keys, roles, per-key rate limits, and the clock.

A key comes in the `X-API-Key` header, as `Authorization: Bearer <key>`, or as the `api_key` query
parameter (Open311 clients send it so, and in the POST body, which the Open311 routes pass to
`authenticate`). Keys are stored hashed; a lookup is cached for a few seconds so a busy device does not
cost a database round trip per message, and revoking a key through the admin API drops it at once.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from ..core.model import ApiKey, Role


def now() -> datetime:
    """The server's clock (a dependency, so tests can override it)."""
    return datetime.now(UTC)


def digest(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


class KeyCache:
    """digest → (ApiKey or None, when the answer expires)."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[ApiKey | None, float]] = {}
        self._lock = threading.Lock()

    def lookup(self, plain: str, authenticate: Callable[[str], ApiKey | None]) -> ApiKey | None:
        key_digest = digest(plain)
        with self._lock:
            hit = self._entries.get(key_digest)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        key = authenticate(plain)
        with self._lock:
            if len(self._entries) > 10_000:  # someone trying random keys: do not grow without bound
                self._entries.clear()
            self._entries[key_digest] = (key, time.monotonic() + self.ttl_s)
        return key

    def forget(self, key_digest: str) -> None:
        with self._lock:
            self._entries.pop(key_digest, None)


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per key: `rate` requests per second, bursts of up to 2 s worth (at least one)."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key_digest: str, rate: float) -> float:
        """0 when the request may go ahead, else the seconds until it could."""
        burst = max(1.0, 2.0 * rate)
        at = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(key_digest, _Bucket(burst, at))
            bucket.tokens = min(burst, bucket.tokens + (at - bucket.stamp) * rate)
            bucket.stamp = at
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / rate if rate > 0 else 3600.0


def key_from_request(request: Request) -> str | None:
    """The plain key the caller sent, wherever it put it (None when it sent none)."""
    header = request.headers.get("x-api-key")
    if header:
        return header.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query_params.get("api_key") or None


def authenticate(request: Request, plain: str, roles: tuple[Role, ...]) -> ApiKey:
    """The caller's key, checked: 401 unknown or revoked, 403 wrong role, 429 past its rate."""
    state = request.app.state
    key = state.key_cache.lookup(plain, state.ioc.authenticate)
    if key is None or key.revoked:
        raise HTTPException(401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    if roles and key.role is not Role.ADMIN and key.role not in roles:
        allowed = ", ".join(role.value for role in roles)
        raise HTTPException(403, f"a {key.role.value} key may not do this (needs: {allowed})")
    rate = key.rate_per_s if key.rate_per_s is not None else state.settings.rate_limits.get(key.role, 5.0)
    wait = state.rate_limiter.take(key.digest, rate)
    if wait > 0:
        raise HTTPException(429, f"rate limit of {rate:g} requests/s for this key exceeded",
                            headers={"Retry-After": str(max(1, math.ceil(wait)))})
    return key


# Declared as security schemes so the OpenAPI document says where a key may go; the values are read by
# `key_from_request` (which also serves the Open311 POST, whose key may sit in the form).
_HEADER = APIKeyHeader(name="X-API-Key", scheme_name="ApiKeyHeader", auto_error=False)
_BEARER = HTTPBearer(scheme_name="Bearer", auto_error=False)
_QUERY = APIKeyQuery(name="api_key", scheme_name="ApiKeyQuery", auto_error=False)


def sent_key(request: Request, _header: str | None = Security(_HEADER),
             _bearer: HTTPAuthorizationCredentials | None = Security(_BEARER),
             _query: str | None = Security(_QUERY)) -> str | None:
    """A dependency: the plain key the caller sent, if any (declares the three ways in OpenAPI)."""
    return key_from_request(request)


def require(*roles: Role) -> Callable[..., ApiKey]:
    """A dependency: the caller's ApiKey, which must have one of `roles` (admin always may)."""

    def dependency(request: Request, plain: str | None = Depends(sent_key)) -> ApiKey:
        if not plain:
            raise HTTPException(401, "an API key is required (header X-API-Key, Authorization: Bearer, "
                                     "or query api_key)", headers={"WWW-Authenticate": "Bearer"})
        return authenticate(request, plain, roles)

    return dependency


def optional_key() -> Callable[..., ApiKey | None]:
    """A dependency: None when the caller sent no key, else its checked ApiKey (any role)."""

    def dependency(request: Request, plain: str | None = Depends(sent_key)) -> ApiKey | None:
        return authenticate(request, plain, ()) if plain else None

    return dependency


def has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return bool(request.headers.get("transfer-encoding")) or (length is not None and length.strip() != "0")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def content_types(*allowed: str) -> Callable[[Request], None]:
    """A dependency: 415 unless a request body comes as one of `allowed` media types."""

    def dependency(request: Request) -> None:
        if has_body(request) and media_type(request) not in allowed:
            got = media_type(request) or "no Content-Type"
            raise HTTPException(415, f"Content-Type must be {' or '.join(allowed)}, got {got}")

    return dependency


def actor(key: ApiKey) -> str:
    """How a key shows in a request's history: its label, or its role and a digest prefix."""
    return key.label or f"{key.role.value}:{key.digest[:8]}"
