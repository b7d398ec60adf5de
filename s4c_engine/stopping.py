"""When a request stops: EOS, max_tokens (or the context end) and stop strings.

Tokens are appended one at a time so a multi-token speculative step stops at exactly the token
plain decoding would have stopped at. The EOS token is kept in the ids (as HF generate does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from s4c_engine.config import FinishReason

Decode = Callable[[Sequence[int]], str]


@dataclass(frozen=True)
class StopRule:
    eos_token_ids: frozenset[int]
    max_tokens: int
    stop: tuple[str, ...] = ()

    @property
    def tail_tokens(self) -> int:
        """How many trailing tokens can hold a stop string (a char may take 4 byte tokens)."""
        return 4 * max((len(s) for s in self.stop), default=0) + 4


def extend_until_stop(
    generated: list[int], new_tokens: Sequence[int], rule: StopRule, decode: Decode | None
) -> FinishReason | None:
    """Append new_tokens to `generated` (in place) up to the first stopping token.

    Returns "stop" (EOS or a stop string), "length" (max_tokens reached) or None.
    Stop strings need `decode`; without it they are ignored.
    """
    for token in new_tokens:
        generated.append(token)
        if token in rule.eos_token_ids:
            return "stop"
        if rule.stop and decode is not None:
            tail = decode(generated[-rule.tail_tokens :])
            if any(s in tail for s in rule.stop):
                return "stop"
        if len(generated) >= rule.max_tokens:
            return "length"
    return None


def cut_at_stop_string(text: str, stop: Sequence[str]) -> str:
    """Text before the first occurrence of any stop string (unchanged when none occurs)."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]
