"""The target distribution a request samples from, and seeded draws from it.

Processing order (as in HF's warpers): temperature, then top-k, then top-p (nucleus).
Randomness only comes from the per-request `torch.Generator` passed in.
"""

from __future__ import annotations

import torch

from s4c_engine.config import SamplingParams


def make_generator(params: SamplingParams, device: torch.device | str) -> torch.Generator | None:
    """A generator seeded from params.seed (fresh entropy when None); None for greedy."""
    if params.is_greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is None:
        generator.seed()
    else:
        generator.manual_seed(params.seed)
    return generator


def processed_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities (M, V) after temperature, top-k and top-p, from logits (M, V)."""
    scores = logits.float() / max(params.temperature, 1e-5)
    vocab = scores.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(scores, params.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        sorted_probs = sorted_scores.softmax(-1)
        # Drop a token when the mass strictly before it already reaches top_p (keeps >= 1).
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(-1)


def choose_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row of logits (M, V): argmax when greedy, else a seeded sample. (M,)"""
    if params.is_greedy:
        return logits.argmax(-1)
    probs = processed_probs(logits, params)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
