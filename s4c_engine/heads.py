"""Draft heads: K small heads on the target's last hidden state that propose future tokens.

Two kinds share one interface, chosen by `HeadConfig.kind`:
- "s4c": head i sees h_t and the frozen target embeddings of the root token and of the i tokens
  drafted before it on the same path (sequential dependence, as in Hydra), so a path is coherent;
- "medusa": independent heads on h_t only (the baseline).
The vocabulary projection is the target's frozen lm_head restricted to a draft vocabulary.
This module neither builds trees nor trains; it owns the weights, their file format and checks.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from s4c_engine.errors import HeadsMismatchError

HeadKind = Literal["s4c", "medusa"]

CONFIG_FILE = "head_config.json"
WEIGHTS_FILE = "heads.safetensors"
FORMAT_VERSION = 1
IGNORE_INDEX = -100


@dataclass(frozen=True)
class HeadConfig:
    """Structure of a set of draft heads and the target they were built for.

    `draft_vocab_size == vocab_size` means the heads draft over the full vocabulary.
    `feature_layers` (s4c only): decoder layers whose outputs (the residual stream after that
    layer) join the last hidden state as the heads' input, EAGLE-3-style low/mid/high fusion,
    through a projection of their own (`DraftHeads.fuse`, each layer at unit RMS); empty means
    the last hidden state alone.
    """

    kind: HeadKind = "s4c"
    num_heads: int = 4
    num_layers: int = 1
    draft_vocab_size: int = 8192
    target_name: str = ""
    target_arch: str = ""
    hidden_size: int = 0
    vocab_size: int = 0
    feature_layers: tuple[int, ...] = ()
    # Context attention (s4c only; 0 = none): each head attends, from its own input, over
    # per-position keys/values of the committed context, built from (h_p, x_p, x_{p+1}), with
    # `context_heads` attention heads of `context_head_dim`. Positions before
    # `context_start` (the chat template's common header) never enter the context.
    context_heads: int = 0
    context_head_dim: int = 64
    context_start: int = 0
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "feature_layers", tuple(int(i) for i in self.feature_layers))
        if self.feature_layers and self.kind != "s4c":
            raise ValueError("only s4c heads take decoder-layer features")
        if self.kind not in ("s4c", "medusa"):
            raise ValueError(f"unknown head kind {self.kind!r}")
        if self.num_heads < 1 or self.num_layers < 1:
            raise ValueError("num_heads and num_layers must be >= 1")
        if not 0 < self.draft_vocab_size <= self.vocab_size:
            raise ValueError("draft_vocab_size must be in [1, vocab_size]")
        if self.context_heads and self.kind != "s4c":
            raise ValueError("only s4c heads attend over the context")
        if self.context_heads < 0 or self.context_head_dim < 1 or self.context_start < 0:
            raise ValueError("context_heads, context_start >= 0 and context_head_dim >= 1")

    @property
    def uses_context(self) -> bool:
        """Whether the heads attend over the committed context (see `ContextAttention`)."""
        return self.context_heads > 0

    @property
    def feature_size(self) -> int:
        """Width of the heads' input features: the last hidden state plus one per layer."""
        return self.hidden_size * (1 + len(self.feature_layers))

    @classmethod
    def for_target(cls, model: nn.Module, target_name: str, **fields: object) -> HeadConfig:
        """A config matching `model` (a HF causal LM); `fields` override kind, sizes, ..."""
        cfg: Any = model.config  # a transformers PretrainedConfig
        vocab = int(cfg.vocab_size)
        fields.setdefault("draft_vocab_size", min(8192, vocab))
        return cls(
            target_name=target_name,
            target_arch=str(cfg.model_type),
            hidden_size=int(cfg.hidden_size),
            vocab_size=vocab,
            **fields,  # type: ignore[arg-type]
        )

    def check_target(self, model: nn.Module, target_name: str) -> None:
        """Raise HeadsMismatchError unless these heads were built for this target."""
        cfg: Any = model.config  # a transformers PretrainedConfig
        found = {
            "target_name": target_name,
            "target_arch": str(cfg.model_type),
            "hidden_size": int(cfg.hidden_size),
            "vocab_size": int(cfg.vocab_size),
        }
        wrong = [
            f"{k}: heads {getattr(self, k)!r} != target {v!r}"
            for k, v in found.items()
            if getattr(self, k) != v
        ]
        if wrong:
            raise HeadsMismatchError(
                "draft heads do not fit this target (" + "; ".join(wrong) + ")"
            )


def _check_fused_projections(state: dict[str, torch.Tensor], config: HeadConfig) -> None:
    """Heads with fused layers saved before `fuse` existed kept the layers' raw features
    inside input_proj; they do not fit today's unit-RMS fusion: refuse them clearly."""
    if config.feature_layers and "fuse.0.weight" not in state:
        raise HeadsMismatchError(
            "these heads fuse decoder layers in the old layout (inside input_proj); "
            "retrain them with this version"
        )


class VocabProjection(nn.Module):
    """The frozen vocabulary projection of the heads: x @ weight.T, weight (Vd, D) being the
    target lm_head rows of the draft vocabulary (a non-persistent buffer, never saved). A
    module of its own so inference can swap in a faster kernel (`narrow_linear`)."""

    bias = None
    weight: torch.Tensor  # non-persistent buffer

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.in_features = int(weight.shape[1])
        self.out_features = int(weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


class ResBlock(nn.Module):
    """x + SiLU(W x + b) with W zero-initialised, so a new block is the identity."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(size, size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.act(self.linear(x))
        return out


@dataclass(frozen=True)
class Context:
    """What the heads attend over, for B rows: keys and values (B, L, A) of L context
    positions (see `ContextAttention.entries`) and mask (B, M or 1, L) bool, True where query
    m of row b may see position l (padding and, in training, later positions are False).
    `with_sink` is True once `ContextAttention.with_sink` has put the sink entry first."""

    keys: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor
    with_sink: bool = False


def _unit_rms(x: torch.Tensor) -> torch.Tensor:
    """x scaled to unit root-mean-square over its last dim (the target's hidden states and
    its embeddings differ ~15x in scale; each part of an entry should count)."""
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)


def fusion_input(layers: torch.Tensor, size: int) -> torch.Tensor:
    """The fused decoder-layer features (..., L * size) as `DraftHeads.fuse` reads them: each
    layer's residual stream at unit RMS (mid-layer residuals are unnormalised and their scale
    grows with depth; each layer should count alike)."""
    parts = layers.unflatten(-1, (-1, size))  # type: ignore[no-untyped-call]
    return _unit_rms(parts).flatten(-2)


class ContextAttention(nn.Module):
    """The heads' attention over the committed context (s4c heads with `context_heads` > 0).

    A context position p is the entry (h_p, x_p, x_{p+1}): the target's last hidden state
    there, its input token and the token that followed (the target's own choice on answer
    positions), each part scaled to unit RMS. One shared projection makes each entry's key and
    value once, when the
    position is committed; head i queries with its own input (h_t and the path's tokens) and
    adds the result back through its own zero-initialised output projection, so new context
    attention leaves the heads' outputs unchanged until trained. A learned "sink" key with a
    zero value is always present: a query may attend to nothing, and an empty context
    (a prompt no longer than the header) is well defined. The query of a path that ends in
    token A can match the entries whose x_p is A and read their x_{p+1}: the induction
    pattern that h_t alone does not carry.
    """

    def __init__(self, size: int, num_heads: int, attn_heads: int, head_dim: int) -> None:
        super().__init__()
        self.attn_heads, self.head_dim = attn_heads, head_dim
        width = attn_heads * head_dim
        self.kv = nn.Linear(3 * size, 2 * width, bias=False)
        self.sink = nn.Parameter(torch.zeros(width))
        self.query = nn.ModuleList(nn.Linear(size, width, bias=False) for _ in range(num_heads))
        self.out = nn.ModuleList(nn.Linear(width, size, bias=False) for _ in range(num_heads))
        for proj in self.out:
            nn.init.zeros_(cast(nn.Linear, proj).weight)

    def entries(
        self, hidden: torch.Tensor, token_emb: torch.Tensor, next_emb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (..., A) of context positions: hidden (..., D) h_p; token_emb,
        next_emb (..., D) the embeddings of x_p and x_{p+1}."""
        parts = [_unit_rms(hidden), _unit_rms(token_emb), _unit_rms(next_emb)]
        kv = self.kv(torch.cat(parts, -1))
        keys, values = kv.chunk(2, dim=-1)
        return keys, values

    def with_sink(self, context: Context) -> Context:
        """`context` with the sink entry first (a copy of the keys and values): done once per
        drafted tree or training batch, not once per head and depth."""
        if context.with_sink:
            return context
        b = context.keys.shape[0]
        sink = self.sink.to(context.keys.dtype).expand(b, 1, -1)
        return Context(
            torch.cat([sink, context.keys], 1),
            torch.cat([torch.zeros_like(sink), context.values], 1),
            torch.cat([context.mask.new_ones(*context.mask.shape[:2], 1), context.mask], -1),
            with_sink=True,
        )

    def forward(self, head: int, x: torch.Tensor, context: Context) -> torch.Tensor:
        """x (B, M, D) head `head`'s input for M queries per row -> (B, M, D) to add to x."""
        b, m, _ = x.shape
        h, dk = self.attn_heads, self.head_dim
        context = self.with_sink(context)  # no copy when the caller added it already
        q = self.query[head](_unit_rms(x)).view(b, m, h, dk).transpose(1, 2)  # (B, H, M, dk)
        k = context.keys.view(b, -1, h, dk).transpose(1, 2).to(q.dtype)
        v = context.values.view(b, -1, h, dk).transpose(1, 2).to(q.dtype)
        mask = context.mask[:, None]  # (B, 1, M|1, 1 + L)
        attended = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out: torch.Tensor = self.out[head](attended.transpose(1, 2).reshape(b, m, h * dk))
        return out


class DraftHeads(nn.Module):
    """K draft heads; head i predicts the token i+2 positions after the hidden state's position.

    Trainable: the per-head input projections and fused-layer projections (s4c only), the
    context attention (when configured) and the ResBlocks. Frozen and shared with
    the target (non-persistent buffers, never saved): the input embedding table and the lm_head
    rows of the draft vocabulary. A new head starts as "predict the next token" (identity).
    """

    # buffers (registered in __init__)
    draft_vocab: torch.Tensor  # (Vd,)
    target_to_draft: torch.Tensor  # (V,)
    embed_weight: torch.Tensor  # (V, D)

    def __init__(
        self,
        config: HeadConfig,
        embed_weight: torch.Tensor,
        lm_head_weight: torch.Tensor,
        draft_vocab: torch.Tensor,
    ) -> None:
        """embed_weight, lm_head_weight: (V, D) target tensors; draft_vocab: (Vd,) target ids."""
        super().__init__()
        d, v = config.hidden_size, config.vocab_size
        if embed_weight.shape != (v, d) or lm_head_weight.shape != (v, d):
            raise HeadsMismatchError("target embedding / lm_head shapes do not match HeadConfig")
        if draft_vocab.shape != (config.draft_vocab_size,):
            raise HeadsMismatchError("draft_vocab length does not match HeadConfig")
        self.config = config
        draft_vocab = draft_vocab.to(device=embed_weight.device, dtype=torch.long)
        is_full = config.draft_vocab_size == v and bool(
            torch.equal(draft_vocab, torch.arange(v, device=draft_vocab.device))
        )
        target_to_draft = torch.full((v,), -1, dtype=torch.long, device=draft_vocab.device)
        target_to_draft[draft_vocab] = torch.arange(len(draft_vocab), device=draft_vocab.device)
        self.register_buffer("draft_vocab", draft_vocab)  # (Vd,) saved with the weights
        self.register_buffer("target_to_draft", target_to_draft, persistent=False)  # (V,)
        self.register_buffer("embed_weight", embed_weight.detach(), persistent=False)  # (V, D)
        # Sliced once here: drafting never touches the full (V, D) projection.
        rows = lm_head_weight.detach() if is_full else lm_head_weight.detach()[draft_vocab]
        self.vocab = VocabProjection(rows)  # (Vd, D)
        self.input_proj = nn.ModuleList()
        # Fused decoder-layer features enter through their own zero-initialised projection
        # (added to input_proj's output), so heads trained without them gain them as a new
        # part that starts at "no effect", like the context attention.
        self.fuse = nn.ModuleList()
        if config.kind == "s4c":
            for i in range(config.num_heads):
                proj = nn.Linear(d + (i + 1) * d, d, bias=False)
                with torch.no_grad():
                    proj.weight.zero_()
                    proj.weight[:, :d] = torch.eye(d)  # start by passing h_t through
                self.input_proj.append(proj)
                if config.feature_layers:
                    fuse = nn.Linear(config.feature_size - d, d, bias=False)
                    nn.init.zeros_(fuse.weight)
                    self.fuse.append(fuse)
        self.blocks = nn.ModuleList(
            nn.Sequential(*[ResBlock(d) for _ in range(config.num_layers)])
            for _ in range(config.num_heads)
        )
        self.context = (
            ContextAttention(d, config.num_heads, config.context_heads, config.context_head_dim)
            if config.uses_context
            else None
        )
        self.to(device=embed_weight.device, dtype=embed_weight.dtype)

    @property
    def num_heads(self) -> int:
        return self.config.num_heads

    @property
    def draft_lm_head(self) -> torch.Tensor:
        """(Vd, D) the target's lm_head rows of the draft vocabulary (frozen)."""
        weight = self.vocab.weight
        assert isinstance(weight, torch.Tensor)
        return weight

    # ---- construction and files ------------------------------------------------------------

    @classmethod
    def create(
        cls, config: HeadConfig, model: nn.Module, draft_vocab: torch.Tensor | None = None
    ) -> DraftHeads:
        """New (untrained, identity-start) heads on `model`'s frozen embedding and lm_head.

        draft_vocab: (Vd,) target ids, ideally the most frequent tokens; default the first Vd ids
        (BPE vocabularies list frequent merges first).
        """
        if draft_vocab is None:
            draft_vocab = torch.arange(config.draft_vocab_size)
        embed = model.get_input_embeddings().weight  # type: ignore[operator]
        lm_head = model.get_output_embeddings().weight  # type: ignore[operator]
        return cls(config, embed, lm_head, draft_vocab)

    @classmethod
    def load(cls, path: Path, model: nn.Module, target_name: str) -> DraftHeads:
        """Load heads saved by `save` for `model`; HeadsMismatchError if built for another."""
        path = Path(path)
        raw = json.loads((path / CONFIG_FILE).read_text())
        if raw.get("format_version") != FORMAT_VERSION:
            raise HeadsMismatchError(
                f"{path}: unsupported heads format {raw.get('format_version')}"
            )
        config = HeadConfig(**raw)
        config.check_target(model, target_name)
        state = load_file(str(path / WEIGHTS_FILE))
        _check_fused_projections(state, config)
        heads = cls.create(config, model, state["draft_vocab"])
        heads.load_state_dict(state, strict=True)
        return heads

    def save(self, path: Path) -> None:
        """Write `head_config.json` and `heads.safetensors` (trainable weights + draft_vocab)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: t.detach().to("cpu").contiguous() for k, t in self.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE))
        (path / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    # ---- inference ---------------------------------------------------------------------------

    def context_entries(
        self, hidden: torch.Tensor, tokens: torch.Tensor, next_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (..., A) of context positions for `head_features`' `context`:
        hidden (..., F) the target's features there (the last hidden state is used), tokens
        and next_tokens (...) the position's token and the one after it."""
        if self.context is None:
            raise ValueError("these heads do not attend over the context")
        h = hidden[..., : self.config.hidden_size].to(self.embed_weight.dtype)
        return self.context.entries(h, self.embed_weight[tokens], self.embed_weight[next_tokens])

    def head_features(
        self,
        head: int,
        hidden: torch.Tensor,
        path_tokens: torch.Tensor | None,
        context: Context | None = None,
    ) -> torch.Tensor:
        """Head `head`'s output features before the vocabulary projection.

        hidden: (..., F) the target's features at t: last hidden state h_t, then the outputs of
        `config.feature_layers` (F = config.feature_size); path_tokens: (..., head+1) target
        ids [root, draft_1, ..., draft_head] on the path (ignored by medusa heads); context
        (heads with context attention, required there): what row b's queries attend over,
        hidden being (B, M, F) or (M, F) for a single row. Returns (..., D).
        """
        x = hidden.to(self.embed_weight.dtype)  # heads may run in another dtype than the target
        if self.config.kind == "s4c":
            if path_tokens is None or path_tokens.shape[-1] != head + 1:
                raise ValueError(f"s4c head {head} needs {head + 1} path tokens")
            emb = self.embed_weight[path_tokens]  # (..., head+1, D)
            d = self.config.hidden_size
            x, layers = x[..., :d], x[..., d:]
            x = self.input_proj[head](torch.cat([x, emb.flatten(-2)], -1))
            if self.fuse:
                x = x + self.fuse[head](fusion_input(layers, d))
        if self.context is not None:
            if context is None:
                raise ValueError("heads with context attention need the context")
            rows = x if x.dim() == 3 else x[None]
            x = x + self.context(head, rows, context).view_as(x)
        out: torch.Tensor = self.blocks[head](x)
        return out

    def head_logits(
        self,
        head: int,
        hidden: torch.Tensor,
        path_tokens: torch.Tensor | None,
        context: Context | None = None,
    ) -> torch.Tensor:
        """Logits over the draft vocabulary, (..., Vd); see `head_features` for the inputs."""
        logits: torch.Tensor = self.vocab(self.head_features(head, hidden, path_tokens, context))
        return logits

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Map draft-vocabulary indices to target token ids (same shape)."""
        return self.draft_vocab[draft_ids]

    # ---- training ----------------------------------------------------------------------------

    def forward(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits of every head at every position, (K, B, T, Vd).

        hidden: (B, T, F) target features (see `head_features`) for `input_ids`
        (B, T). Head i at position t predicts input_ids[t + i + 2], conditioned (s4c) on
        input_ids[t + 1 .. t + i + 1]. Positions past the end see padding; `training_targets`
        marks them IGNORE_INDEX.
        """
        b, t = input_ids.shape
        padded = torch.cat([input_ids, input_ids.new_zeros(b, self.num_heads + 1)], dim=1)
        # shifted[..., j] = input_ids[t + 1 + j]
        shifted = torch.stack([padded[:, 1 + j : 1 + j + t] for j in range(self.num_heads)], -1)
        context = None
        if self.context is not None:  # position t sees the entries of positions <= t
            keys, values = self.context_entries(hidden, input_ids, shifted[..., 0])
            causal = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
            context = self.context.with_sink(Context(keys, values, causal.expand(b, t, t)))
        out = [
            self.head_logits(
                i, hidden, shifted[..., : i + 1] if self.config.kind == "s4c" else None, context
            )
            for i in range(self.num_heads)
        ]
        return torch.stack(out)

    def training_targets(
        self, input_ids: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Draft-vocab targets for `forward`'s logits, (K, B, T) long.

        Entry [i, b, t] is the draft index of input_ids[b, t + i + 2], or IGNORE_INDEX where that
        position is past the end, invalid (`valid` (B, T) bool, e.g. padding/prompt) or outside
        the draft vocabulary.
        """
        b, t = input_ids.shape
        k = self.num_heads
        ids = torch.cat([input_ids, input_ids.new_zeros(b, k + 2)], dim=1)
        ok = torch.zeros(b, t + k + 2, dtype=torch.bool, device=input_ids.device)
        ok[:, :t] = True if valid is None else valid
        out = []
        for i in range(k):
            tgt_ids, tgt_ok = ids[:, i + 2 : i + 2 + t], ok[:, i + 2 : i + 2 + t]
            draft = self.target_to_draft[tgt_ids]
            out.append(torch.where(tgt_ok & (draft >= 0), draft, IGNORE_INDEX))
        return torch.stack(out)
