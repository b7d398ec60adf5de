"""Exceptions the engine raises on purpose; callers catch these by name.

Nothing here imports torch, so the API can catch `PromptError` without loading the model stack.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises deliberately."""


class PromptError(EngineError, ValueError):
    """A prompt cannot run (empty, longer than the context, ...). `index` names the prompt."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"prompt {index}: {message}")
        self.index = index


class HeadsMismatchError(EngineError, ValueError):
    """Draft heads were trained for another target (name, architecture, hidden or vocab size)."""


class ModelFetchError(EngineError, RuntimeError):
    """Downloading or converting the default model failed (pip error, checksum mismatch, ...)."""
