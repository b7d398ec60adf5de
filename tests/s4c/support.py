"""Helpers for the client and CLI tests: the live API handle and OpenAI Batch lines."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from jobs import store
from jobs.db import engine_from_settings, session_factory, transaction
from jobs.settings import Settings


@dataclass(frozen=True)
class LiveApi:
    url: str
    settings: Settings

    def new_key(self, tenant: str | None = None) -> str:
        """A fresh API key (for a fresh tenant unless one is named)."""
        engine = engine_from_settings(self.settings)
        try:
            with transaction(session_factory(engine)) as session:
                _key, plaintext = store.create_api_key(
                    session, tenant or f"tenant-{uuid.uuid4().hex[:8]}"
                )
        finally:
            engine.dispose()
        return plaintext


def batch_line(custom_id: str, content: str, max_tokens: int = 8) -> dict[str, object]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens},
    }
