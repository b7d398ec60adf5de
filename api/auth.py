"""Bearer-key authentication and per-key rate limiting for the `/v1` blueprints.

`require_tenant` runs before every `/v1` view: it reads `Authorization: Bearer <key>`, looks the
key up through `jobs.store.authenticate` (hash only), counts the request against the key's
rate limit and leaves the tenant on `flask.g.tenant`. It never logs the key.
"""

from __future__ import annotations

import hashlib

from flask import g, request

from api.problems import ApiProblem
from api.services import db_session, services
from jobs import store
from jobs.models import Tenant

REALM = 'Bearer realm="s4c"'


def _unauthorized(detail: str, *, invalid: bool) -> ApiProblem:
    challenge = f'{REALM}, error="invalid_token"' if invalid else REALM
    return ApiProblem(401, "unauthorized", detail, headers={"WWW-Authenticate": challenge})


def bearer_key() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise _unauthorized("send your API key as 'Authorization: Bearer <key>'", invalid=False)
    if scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("the Authorization header must be 'Bearer <key>'", invalid=True)
    return key.strip()


def require_tenant() -> None:
    """before_request hook: authenticate, rate-limit, set `g.tenant` (401/429 problems)."""
    key = bearer_key()
    tenant = store.authenticate(db_session(), key)
    if tenant is None:
        raise _unauthorized("the API key is unknown or revoked", invalid=True)
    identity = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    retry_after = services().limiter.hit(identity)
    if retry_after is not None:
        limit = services().settings.rate_limit_per_minute
        raise ApiProblem(
            429,
            "rate-limited",
            f"this API key is limited to {limit} requests per minute; retry in {retry_after:.0f} s",
            headers={"Retry-After": f"{retry_after:.0f}"},
        )
    g.tenant = tenant


def current_tenant() -> Tenant:
    tenant = g.tenant
    assert isinstance(tenant, Tenant)
    return tenant
