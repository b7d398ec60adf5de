"""The target model adapter: a stock HF causal LM driven through its public forward.

We pass our KV cache object, explicit position ids and a ready 4-D mask (transformers returns
such a mask unchanged), run the decoder body, gather only the positions the caller needs and
apply lm_head to those rows alone. No modeling code is forked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from s4c_engine.attention import register_attention
from s4c_engine.kv_cache import RowKVCache

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TargetOutput:
    # (B, M, F) draft features: the last-layer hidden state (after the final norm), then the
    # outputs of the captured decoder layers (F = D * (1 + len(feature_layers)))
    hidden: torch.Tensor
    logits: torch.Tensor  # (B, M, V)


class Target:
    """A loaded causal LM plus the few facts the decoder needs about it."""

    def __init__(self, model: nn.Module) -> None:
        config: Any = model.config  # a transformers PretrainedConfig
        layer_types = getattr(config, "layer_types", None) or []
        if any(t != "full_attention" for t in layer_types):
            raise ValueError(
                "models with sliding-window or linear attention layers are not "
                "supported by the row KV cache"
            )
        if getattr(config, "final_logit_softcapping", None):
            raise ValueError("models with final logit soft-capping are not supported")
        self.model = model
        self.config = config
        self.decoder = cast(nn.Module, model.base_model)  # the decoder body (HF base model)
        self.lm_head: nn.Module = model.get_output_embeddings()  # type: ignore[operator]
        first = next(model.parameters())
        self.device = first.device
        self.dtype = first.dtype
        self.feature_layers: tuple[int, ...] = ()
        self._captured: dict[int, torch.Tensor] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def capture_layers(self, layers: tuple[int, ...]) -> None:
        """Also return the outputs of these decoder layers (after the last hidden state) in
        `TargetOutput.hidden`: what heads with `feature_layers` draft from."""
        for handle in self._hooks:
            handle.remove()
        self._hooks, self._captured = [], {}
        decoder_layers = cast(nn.ModuleList, self.decoder.layers)
        for i in layers:
            if not 0 <= i < len(decoder_layers):
                raise ValueError(f"the target has no decoder layer {i}")

            def hook(_m: nn.Module, _a: object, output: object, i: int = i) -> None:
                out = output[0] if isinstance(output, tuple) else output
                self._captured[i] = out  # type: ignore[assignment]

            self._hooks.append(decoder_layers[i].register_forward_hook(hook))
        self.feature_layers = tuple(layers)

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        narrow_kernels: bool = False,
    ) -> Target:
        """Load a HF causal-LM directory with SDPA attention, in eval mode. On the CPU the
        attention is `attention.gqa_sdpa_attention` (grouped K/V heads without copies; what
        it does not cover goes to transformers' SDPA). narrow_kernels: an fp32 CPU model runs
        its products of 1..32 rows (decoding steps, tree verification) through
        `narrow_linear` (ignored where the kernel cannot run)."""
        from transformers import AutoModelForCausalLM

        on_cpu = torch.device(device).type == "cpu"
        # typed as nn.Module: transformers wraps PreTrainedModel.to with functools.wraps,
        # which mypy cannot bind as a method
        model: nn.Module = AutoModelForCausalLM.from_pretrained(
            str(model_dir),
            dtype=DTYPES[dtype],
            attn_implementation=register_attention() if on_cpu else "sdpa",
        )
        model = model.to(device).eval()
        if narrow_kernels and on_cpu and dtype == "float32":
            from s4c_engine.narrow_linear import load_kernel, use_narrow_linears

            kernel = load_kernel()
            if kernel is not None:
                use_narrow_linears(model, kernel)
        return cls(model)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.config, "pad_token_id", None)
        return int(pad) if pad is not None else 0

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: RowKVCache,
        select: torch.Tensor | None = None,
    ) -> TargetOutput:
        """Run T new tokens per row through the model, writing their K/V into `cache`.

        input_ids, position_ids: (B, T); attention_mask: (B, 1, T, S) additive, S =
        cache.kv_length after `cache.begin_forward(T)`; select: (B, M) indices into T of the
        positions whose hidden states and logits are returned (all T when None).
        """
        hidden = self.features(input_ids, position_ids, attention_mask, cache)
        if select is not None:
            hidden = torch.gather(hidden, 1, select[:, :, None].expand(-1, -1, hidden.shape[-1]))
        return TargetOutput(hidden=hidden, logits=self.logits(hidden))

    def features(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: RowKVCache,
    ) -> torch.Tensor:
        """`forward` without the vocabulary projection: (B, T, F) features of every new
        token (last hidden state after the final norm, then the captured layers)."""
        out = self.decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        hidden: torch.Tensor = out.last_hidden_state  # (B, T, D)
        if self.feature_layers:
            parts = [hidden, *(self._captured.pop(i) for i in self.feature_layers)]
            hidden = torch.cat(parts, -1)  # (B, T, F)
        return hidden

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Target logits (..., V) from features (..., F) (their first D columns)."""
        d = self.config.hidden_size
        last = features[..., :d] if self.feature_layers else features
        logits: torch.Tensor = self.lm_head(last)
        return logits
