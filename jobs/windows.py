"""Completion windows: how long a job may take before it expires (OpenAI Batch's `24h`)."""

from __future__ import annotations

import re
from datetime import timedelta

# A whole number (1 to 999,999) of seconds, minutes, hours or days; "24h" is OpenAI Batch's
# only value. The API's JSON schema publishes this pattern, and it is the whole check.
COMPLETION_WINDOW_PATTERN = r"^[1-9][0-9]{0,5}[smhd]$"
_WINDOW = re.compile(COMPLETION_WINDOW_PATTERN)
_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def completion_window(text: str) -> timedelta:
    """'24h' -> 24 hours; ValueError unless `text` matches COMPLETION_WINDOW_PATTERN."""
    if _WINDOW.fullmatch(text) is None:
        raise ValueError(
            f"completion window {text!r} is not a whole number of s, m, h or d (e.g. '24h')"
        )
    return timedelta(seconds=int(text[:-1]) * _WINDOW_UNITS[text[-1]])
