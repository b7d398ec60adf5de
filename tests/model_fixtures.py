"""Tiny random causal LMs built from configs (no downloads) for engine tests.

`tiny_model(arch)` returns a seeded, eval-mode fp32 model whose weights are scaled up so its
greedy continuations are varied rather than one repeated token.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen2Config

from jobs.settings import Settings
from s4c_engine.heads import DraftHeads, HeadConfig

ARCHS = ("llama", "qwen2")
TINY_VOCAB = 64


def tiny_config(arch: str, *, vocab_size: int = TINY_VOCAB) -> PretrainedConfig:
    """A two-layer config of the given family with grouped-query attention."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    if arch == "llama":
        return LlamaConfig(**common, tie_word_embeddings=True)
    if arch == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=False)
    raise ValueError(arch)


def tiny_model(
    arch: str = "llama",
    *,
    seed: int = 0,
    vocab_size: int = TINY_VOCAB,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> torch.nn.Module:
    """A seeded random model of `arch` in eval mode."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size=vocab_size))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)  # sharper logits: fewer ties, varied continuations
    return model.to(device=device, dtype=dtype).eval()


# Where `make setup` (`s4c model fetch`) put the default model: $S4C_HOME/models/<name>.
DEFAULT_MODEL_DIR = Settings.from_env().resolved_model_dir


def has_default_model() -> bool:
    return (DEFAULT_MODEL_DIR / "model.safetensors").is_file()


def available_devices() -> list[str]:
    """cpu always, cuda when this machine has it."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def random_heads(
    model: torch.nn.Module,
    kind: str = "s4c",
    *,
    num_heads: int = 4,
    draft_vocab_size: int | None = None,
    seed: int = 0,
    scale: float = 0.05,
    feature_layers: tuple[int, ...] = (),
    context_heads: int = 0,
    context_start: int = 0,
) -> DraftHeads:
    """Untrained heads with random perturbations (not the identity start); context_heads > 0
    adds context attention (head dim 8) over positions from context_start on."""
    vocab = int(model.config.vocab_size)
    config = HeadConfig.for_target(
        model,
        "tiny",
        kind=kind,
        num_heads=num_heads,
        draft_vocab_size=draft_vocab_size or vocab,
        feature_layers=feature_layers,
        context_heads=context_heads,
        context_head_dim=8,
        context_start=context_start,
    )
    heads = DraftHeads.create(config, model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator).to(p))
    return heads.eval()
