"""verify and accept: one target forward over every row's draft tree, then the acceptance walk.

verify writes the tree's K/V into the cache after each row's committed prefix (positions
len_b + depth, ancestor-only visibility) and returns the target's logits and hidden states at
every node. accept picks, per row, the path to keep:
- greedy: at node v the target's choice is argmax p_v; follow the child holding it;
- sampling (lossless, "sample-and-match"): draw ONE y_v ~ p_v per node, follow the child whose
  token equals y_v. Every emitted token is then an exact draw from the target conditional;
  siblings are distinct tokens so at most one child matches. Nodes of equal depth share the
  uniform of their position (sampling.py); the walk visits one node per depth, so each emitted
  token still uses its own independent uniform;
- typical (lossy, opt-in): accept child c of v iff p_v(c) > min(eps, delta * exp(-H(p_v))).
The walk ends at node v*; the bonus token is the target's choice at v* (argmax or y_{v*}).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from s4c_engine.attention import build_step_mask
from s4c_engine.config import SamplingParams
from s4c_engine.kv_cache import RowKVCache
from s4c_engine.sampling import processed_probs, sample_at
from s4c_engine.target import Target, TargetOutput
from s4c_engine.tree import TreeBuffers

TYPICAL_EPSILON = 0.09  # Medusa's posterior_threshold
TYPICAL_DELTA = 0.3  # Medusa's posterior_alpha


@dataclass(frozen=True)
class Acceptance:
    """What each row keeps from one verified tree."""

    path_nodes: torch.Tensor  # (B, A) node indices root-first, padded by repeating the last
    accepted: list[int]  # per row: draft tokens accepted (path length - 1)
    emitted: list[list[int]]  # per row: accepted draft tokens + the bonus token
    last_node: torch.Tensor  # (B,) the node the walk ended at (its hidden state seeds drafting)
    has_children: list[list[bool]]  # per row, per path node: did the tree go deeper there


def verify(target: Target, cache: RowKVCache, tree: TreeBuffers) -> TargetOutput:
    """Target forward over the N tree nodes of every row; logits/hidden at all nodes.

    The K/V of all nodes land in cache slots [len_b, len_b + N) uncommitted; `commit_path`
    keeps the accepted ones.
    """
    n = tree.num_nodes
    kv_length = cache.begin_forward(n)
    mask = build_step_mask(cache.lengths, kv_length, tree.ancestors, target.dtype)
    positions = cache.lengths[:, None] + tree.depths  # (B, N)
    return target.forward(tree.tokens, positions, mask, cache)


def target_choices(
    logits: torch.Tensor, params: list[SamplingParams], uniforms: list[torch.Tensor | None]
) -> torch.Tensor:
    """The target's token at every node: argmax for greedy rows; for sampled rows one draw
    per node, at the uniform of the position the node predicts. logits: (B, N, V);
    uniforms[b]: (N,) or None (greedy). Returns (B, N) long."""
    choices = logits.argmax(-1)
    for b, (p, u) in enumerate(zip(params, uniforms)):
        if not p.is_greedy and u is not None:
            choices[b] = sample_at(processed_probs(logits[b], p), u)
    return choices


def _typical_matches(
    tree: TreeBuffers, logits: torch.Tensor, b: int, params: SamplingParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row b: (N,) bool child accepted under typical acceptance, (N,) log p_parent(child)."""
    probs = processed_probs(logits[b], params)  # (N, V)
    entropy = -(probs * probs.clamp_min(1e-20).log()).sum(-1)  # (N,)
    threshold = torch.minimum(
        torch.full_like(entropy, TYPICAL_EPSILON), TYPICAL_DELTA * torch.exp(-entropy)
    )
    parent = tree.parents[b]
    p_child = probs[parent, tree.tokens[b]]  # p_parent(v)(token_v)
    return p_child > threshold[parent], p_child.clamp_min(1e-20).log()


def accept(
    tree: TreeBuffers,
    logits: torch.Tensor,
    params: list[SamplingParams],
    uniforms: list[torch.Tensor | None],
) -> Acceptance:
    """The acceptance walk for every row (see the module docstring). logits: (B, N, V)."""
    b, n = tree.tokens.shape
    choices = target_choices(logits, params, uniforms)  # (B, N)
    parent_choice = torch.gather(choices, 1, tree.parents)
    matches = tree.tokens == parent_choice  # (B, N): node v holds its parent's choice
    path_logp = torch.zeros(b, n, device=logits.device)
    for row, p in enumerate(params):
        if p.acceptance == "typical" and not p.is_greedy:
            matches[row], path_logp[row] = _typical_matches(tree, logits, row, p)
    matches[:, 0] = True
    # A node is on an accepted path iff it and all its ancestors match.
    on_path = ~(tree.ancestors & ~matches[:, None, :]).any(-1)  # (B, N)
    cum_logp = (tree.ancestors.float() * path_logp[:, None, :]).sum(-1)
    # Deepest accepted node; ties (possible only under typical) by path log-probability.
    rank = torch.where(on_path, tree.depths.float() * 1e4 + cum_logp.clamp_min(-1e3), -1e9)
    last = rank.argmax(1)  # (B,)
    path_mask = torch.gather(tree.ancestors, 1, last[:, None, None].expand(-1, 1, n))[:, 0]
    order_key = torch.where(path_mask, tree.depths, n + 1)
    path_nodes = order_key.sort(dim=1, stable=True).indices  # path first, root-first by depth
    accepted_t = path_mask.sum(1) - 1
    width = int(accepted_t.max()) + 1
    path_nodes = path_nodes[:, :width]
    counts = accepted_t.tolist()
    col = torch.arange(width, device=logits.device)
    path_nodes = torch.where(col[None] <= accepted_t[:, None], path_nodes, last[:, None])
    path_tokens = torch.gather(tree.tokens, 1, path_nodes).tolist()
    bonus = torch.gather(choices, 1, last[:, None])[:, 0].tolist()
    child_count = torch.zeros(b, n, dtype=torch.long, device=logits.device)
    child_count.scatter_add_(1, tree.parents[:, 1:], torch.ones_like(tree.parents[:, 1:]))
    deeper = (torch.gather(child_count, 1, path_nodes) > 0).tolist()
    return Acceptance(
        path_nodes=path_nodes,
        accepted=counts,
        emitted=[[*path_tokens[r][1 : counts[r] + 1], bonus[r]] for r in range(b)],
        last_node=last,
        has_children=[deeper[r][: counts[r] + 1] for r in range(b)],
    )
