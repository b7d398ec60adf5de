"""Tenants and API keys: keys are shown once and stored only as a SHA-256 hash.

Plain functions taking a Session; they flush but never commit.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from jobs.models import ApiKey, Tenant, utcnow

KEY_PREFIX = "s4c_"
# last_used_at is refreshed at most this often, so authenticating rarely writes.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


def create_tenant(session: Session, name: str) -> Tenant:
    """The tenant called `name`, created if it does not exist yet."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name, created_at=utcnow())
        session.add(tenant)
        session.flush()
    return tenant


def hash_api_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def create_api_key(session: Session, tenant_name: str) -> tuple[ApiKey, str]:
    """A new key for `tenant_name` (tenant created if needed); the plaintext is returned once
    and only its SHA-256 hash and display prefix are stored."""
    tenant = create_tenant(session, tenant_name)
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        tenant_id=tenant.id,
        key_hash=hash_api_key(plaintext),
        prefix=plaintext[:12],
        created_at=utcnow(),
    )
    session.add(key)
    session.flush()
    return key, plaintext


def authenticate(session: Session, plaintext: str) -> Tenant | None:
    """The tenant owning the (unrevoked) key `plaintext`, else None."""
    if not plaintext.startswith(KEY_PREFIX):
        return None
    digest = hash_api_key(plaintext)
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    # The lookup is by hash already; compare_digest keeps the final check constant-time.
    if key is None or not hmac.compare_digest(key.key_hash, digest):
        return None
    if key.revoked_at is not None:
        return None
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION:
        key.last_used_at = now
    return key.tenant


def revoke_api_key(session: Session, key_id: int) -> bool:
    """Revoke key `key_id`; False if it does not exist or was already revoked."""
    done = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]
