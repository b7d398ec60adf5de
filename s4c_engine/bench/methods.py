"""The measured methods: HF `generate` (plain and prompt lookup) and our engine's methods.

Each runner takes a batch of prompt token ids and returns one `Generated` per row, timed
around the whole call (for a batch, every row carries the batch's wall time). Tokens are cut
the same way for every method: up to and including the first EOS, at most max_new_tokens.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from s4c_engine.config import Prompt, SamplingParams


@dataclass(frozen=True)
class Generated:
    """One row's output and cost. Engine-only facts are None for HF methods."""

    tokens: tuple[int, ...]
    seconds: float
    peak_rss_mb: float
    target_forwards: int | None = None
    accepted_per_depth: tuple[int, ...] = ()
    attempted_per_depth: tuple[int, ...] = ()
    tree_nodes: int | None = None


class MethodRunner(Protocol):
    @property
    def name(self) -> str: ...

    def run(self, prompts: list[list[int]]) -> list[Generated]: ...


def cut_tokens(
    ids: list[int] | tuple[int, ...], eos_ids: frozenset[int], max_new: int
) -> tuple[int, ...]:
    """Generated ids up to and including the first EOS, at most `max_new` of them."""
    out = []
    for tok in ids[:max_new]:
        out.append(int(tok))
        if tok in eos_ids:
            break
    return tuple(out)


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark for this process (Linux); a no-op elsewhere."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """Peak resident memory of this process since the last reset, in MiB (0 if unknown)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass(frozen=True)
class HFRunner:
    """transformers `generate(do_sample=False)`, optionally with prompt lookup decoding."""

    name: str
    model: nn.Module
    eos_ids: frozenset[int]
    pad_id: int
    max_new_tokens: int
    prompt_lookup_num_tokens: int | None = None

    def run(self, prompts: list[list[int]]) -> list[Generated]:
        width = max(len(p) for p in prompts)
        device = next(self.model.parameters()).device
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding, as HF expects for decoder-only
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        extra = {}
        if self.prompt_lookup_num_tokens is not None:
            extra["prompt_lookup_num_tokens"] = self.prompt_lookup_num_tokens
        reset_peak_rss()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(  # type: ignore[operator]
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                eos_token_id=sorted(self.eos_ids),
                pad_token_id=self.pad_id,
                **extra,
            )
        seconds = time.perf_counter() - start
        rss = peak_rss_mb()
        rows = out[:, width:].tolist()
        return [
            Generated(cut_tokens(r, self.eos_ids, self.max_new_tokens), seconds, rss) for r in rows
        ]


@dataclass(frozen=True)
class EngineRunner:
    """`Engine.generate(..., method=...)`, greedy, one call per batch."""

    name: str
    engine: object  # s4c_engine.engine.Engine (typed loosely: the bench loads it lazily)
    method: str
    eos_ids: frozenset[int]
    max_new_tokens: int

    def run(self, prompts: list[list[int]]) -> list[Generated]:
        params = SamplingParams(max_tokens=self.max_new_tokens, temperature=0.0)
        reset_peak_rss()
        start = time.perf_counter()
        results = self.engine.generate(  # type: ignore[attr-defined]
            [Prompt(token_ids=tuple(p)) for p in prompts],
            [params] * len(prompts),
            method=self.method,
        )
        seconds = time.perf_counter() - start
        rss = peak_rss_mb()
        return [
            Generated(
                tokens=cut_tokens(r.token_ids, self.eos_ids, self.max_new_tokens),
                seconds=seconds,
                peak_rss_mb=rss,
                target_forwards=r.stats.target_forwards,
                accepted_per_depth=tuple(r.stats.accepted_per_depth),
                attempted_per_depth=tuple(r.stats.attempted_per_depth),
                tree_nodes=r.stats.tree_nodes,
            )
            for r in results
        ]
