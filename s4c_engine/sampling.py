"""The target distribution a request samples from, and seeded draws from it.

Processing order (as in HF's warpers): temperature, then top-k, then top-p (nucleus).

Randomness is tied to the position of the generated token: the t-th generated token is drawn
by inverting the CDF of its distribution at u_t, the t-th uniform of the request's
`torch.Generator` (seeded from SamplingParams.seed). A draft tree may try several nodes at the
same depth, but the acceptance walk visits one node per depth, so every emitted token still
uses a fresh independent uniform: sampling stays exact (lossless). And a seeded request gives
the same tokens whatever the tree size, batch or method (up to float rounding at a CDF edge).
"""

from __future__ import annotations

import torch

from s4c_engine.config import SamplingParams

BLOCK = 64


class PositionUniforms:
    """u_0, u_1, ... for one request, drawn lazily in blocks from its own CPU generator."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self.drawn = torch.empty(0, dtype=torch.float64)

    @classmethod
    def for_params(cls, params: SamplingParams) -> PositionUniforms | None:
        """Seeded from params.seed (fresh entropy when None); None for greedy requests."""
        if params.is_greedy:
            return None
        generator = torch.Generator()
        if params.seed is None:
            generator.seed()
        else:
            generator.manual_seed(params.seed)
        return cls(generator)

    def take(self, start: int, count: int) -> torch.Tensor:
        """(count,) float64: u_start .. u_{start+count-1}."""
        while self.drawn.shape[0] < start + count:
            block = torch.rand(BLOCK, generator=self.generator, dtype=torch.float64)
            self.drawn = torch.cat([self.drawn, block])
        return self.drawn[start : start + count]


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


def sample_at(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draws: row m of probs (M, V) at uniforms[m] in [0, 1). Returns (M,) long.

    Tokens with probability 0 are never returned (their CDF step is empty).
    """
    cdf = probs.double().cumsum(-1)  # (M, V)
    target = uniforms.to(device=cdf.device)[:, None] * cdf[:, -1:]
    index = torch.searchsorted(cdf, target, right=True)[:, 0]
    return index.clamp_(max=probs.shape[-1] - 1)


def choose_tokens(
    logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor | None
) -> torch.Tensor:
    """One token per row of logits (M, V): argmax when greedy, else drawn at uniforms (M,)."""
    if params.is_greedy or uniforms is None:
        return logits.argmax(-1)
    return sample_at(processed_probs(logits, params), uniforms)
