"""Torch-free parameter and result types shared by the engine, the API and the worker.

`*Params` are per-request knobs, `*Config` are structural per model or run. Everything here is
a frozen dataclass of plain values so it round-trips through JSON (`dataclasses.asdict`) and
the database. Nothing in this module imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"

Acceptance = Literal["lossless", "typical"]
FinishReason = Literal["stop", "length", "error", "cancelled"]
Method = Literal["s4c", "medusa", "ar"]

MAX_STOP_STRINGS = 4


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation knobs.

    temperature 0 means greedy. `acceptance="typical"` is Medusa's lossy typical acceptance and
    is only used when a request asks for it explicitly; the default is lossless.
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    acceptance: Acceptance = "lossless"

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if self.acceptance not in ("lossless", "typical"):
            raise ValueError("acceptance must be 'lossless' or 'typical'")
        # Lists coming back from JSON become tuples so the dataclass stays hashable.
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class Prompt:
    """One prompt: exactly one of raw text, chat messages or token ids.

    Text is used verbatim (no chat template); messages go through the model's chat template
    with the generation prompt appended; token ids go straight to the engine.
    """

    text: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.text, self.messages, self.token_ids)]
        if sum(given) != 1:
            raise ValueError("a Prompt needs exactly one of text, messages or token_ids")


@dataclass(frozen=True)
class RequestStats:
    """What one request cost. tau = tokens committed per target forward, bonus token included."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    target_forwards: int = 0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    wall_seconds: float = 0.0
    # accepted_per_depth[d] = how many steps accepted a draft token at depth d+1;
    # attempted_per_depth[d] = how many steps had a draft at depth d+1 to accept.
    accepted_per_depth: tuple[int, ...] = ()
    attempted_per_depth: tuple[int, ...] = ()
    # Batch-level facts of the run that produced this request: the largest draft tree used
    # (nodes including the root; 1 = plain decoding) and the batch size it started in.
    tree_nodes: int = 0
    batch_size: int = 0

    @property
    def tau(self) -> float:
        return self.completion_tokens / self.target_forwards if self.target_forwards else 0.0


@dataclass(frozen=True)
class GenerationResult:
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason
    stats: RequestStats = field(default_factory=RequestStats)


@dataclass(frozen=True)
class ModelInfo:
    """What the service needs to know about a served model without loading it."""

    name: str
    max_context: int
    vocab_size: int
