"""4-D additive attention masks and position ids for prefill, plain and tree steps.

A step feeds T new tokens per row after that row's committed cache length len_b. Key slot j of
row b is visible to query q iff j < len_b (committed prefix) or j = len_b + m with block[b, q, m]
(causal for prefill, the ancestor-or-self relation for a draft tree). Padding never appears
inside the committed prefix: the cache keeps rows packed from slot 0 (see kv_cache.py).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward


def build_step_mask(
    lengths: torch.Tensor, kv_length: int, block: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Additive mask (B, 1, T, kv_length): 0 where visible, dtype's min elsewhere.

    lengths: (B,) committed lengths; block: (B, T, T) or (T, T) bool visibility among the new
    tokens. kv_length must be >= max(lengths) + T.
    """
    t = block.shape[-1]
    b = lengths.shape[0]
    if block.dim() == 2:
        block = block.expand(b, t, t)
    device = lengths.device
    rel = torch.arange(kv_length, device=device)[None, None, :] - lengths[:, None, None]  # (B,1,S)
    in_block = (rel >= 0) & (rel < t)
    picked = torch.gather(block, 2, rel.clamp(0, t - 1).expand(b, t, kv_length))  # (B,T,S)
    visible = (rel < 0) | (in_block & picked)
    mask = torch.zeros(b, 1, t, kv_length, dtype=dtype, device=device)
    return mask.masked_fill_(~visible[:, None], torch.finfo(dtype).min)


def causal_block(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, T, T) causal block where query/key m >= lengths[b] are hidden (right padding).

    Padded queries still see key 0, so no softmax row is empty.
    """
    idx = torch.arange(width, device=lengths.device)
    causal = idx[None, :] <= idx[:, None]  # (T, T) key <= query
    real_key = idx[None, None, :] < lengths[:, None, None]  # (B, 1, T)
    return causal[None] & (real_key | (idx[None, None, :] == 0))


def right_pad(
    sequences: list[list[int]], pad_id: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack token lists into (B, T_max) ids (right-padded) and their (B,) lengths."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    return ids.to(device), lengths.to(device)


# ---- the attention function the target runs with --------------------------------------------

GQA_SDPA = "s4c_gqa_sdpa"

# Arguments some models pass that only transformers' own SDPA path knows how to apply.
_HF_ONLY_ARGUMENTS = ("softcap", "sliding_window", "position_bias", "s_aux", "sinks")


def gqa_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,  # what each model family passes on (transformers types them loosely)
) -> tuple[torch.Tensor, None]:
    """SDPA over grouped K/V heads in place, for a step with a ready 4-D mask.

    transformers' SDPA path copies every layer's whole K/V with `repeat_kv` whenever a step
    feeds more than one query token with a mask (every tree verification): on a 2-core CPU
    that copy cost about as much as the attention itself (SmolLM2-135M: a 12-node forward 48
    -> 43 ms). Here the grouped heads go to SDPA as they are (`enable_gqa`). query (B, H, T,
    d), key/value (B, H_kv, S, d); returns (B, T, H, d) like transformers' functions. Calls
    this path does not cover (no mask: causal prefill; soft-capping, sliding windows, sinks,
    position biases; dropout) go to transformers' own SDPA function unchanged.
    """
    if (
        attention_mask is None
        or dropout
        or any(kwargs.get(name) is not None for name in _HF_ONLY_ARGUMENTS)
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        scale=scaling,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> str:
    """Register `gqa_sdpa_attention` with transformers (idempotent); returns its name, to pass
    as `attn_implementation` (the public AttentionInterface: no modeling code is forked)."""
    AttentionInterface.register(GQA_SDPA, gqa_sdpa_attention)
    return GQA_SDPA
