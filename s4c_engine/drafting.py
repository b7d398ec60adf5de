"""propose: draft heads turn (h_t, root token) into a tree of candidate continuations per row.

Drafting never runs the target. Head d scores depth d+1 from the target's last hidden state and
(s4c heads) the tokens on the path so far; only the draft vocabulary's lm_head rows are used.
`TreeShape` says which tree to build: a static TreeSpec, or a dynamic EAGLE-2-style tree
(top-k children per frontier node by cumulative log-probability, beam per depth, global
rerank to a fixed node budget so every row has the same N), plus optionally one context
lookup chain per row grafted under the root (`s4c_engine.lookup`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from s4c_engine.heads import Context, DraftHeads
from s4c_engine.tree import (
    StaticTree,
    TreeBuffers,
    TreeSpec,
    ancestor_mask,
    compile_tree,
    select_top_nodes,
)


@dataclass(frozen=True)
class TreeShape:
    """How big a tree to draft. nodes counts the root and at most `lookup` context-lookup
    nodes (one chain per row, fewer when no row's lookup is that long); the heads draft the
    other `head_nodes`; static head trees come from `spec`."""

    nodes: int
    depth: int = 4
    top_k: int = 4
    spec: TreeSpec | None = None
    lookup: int = 0
    # Dynamic trees: head nodes whose cumulative draft probability is below this are left
    # out (the tree shrinks, to the root alone when nothing is likely), because on a CPU
    # even a few extra nodes make a verify step markedly dearer than a plain one.
    min_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("a tree has at least the root node")
        if not 0 <= self.lookup < self.nodes:
            raise ValueError("lookup nodes must be fewer than the tree's nodes")
        if self.spec is not None and self.spec.num_nodes != self.head_nodes:
            raise ValueError("TreeShape.nodes - lookup must equal spec.num_nodes")

    @property
    def head_nodes(self) -> int:
        """Nodes the heads draft, root included."""
        return self.nodes - self.lookup

    @property
    def is_plain(self) -> bool:
        """Root only: plain autoregressive decoding."""
        return self.nodes == 1


def root_only(roots: torch.Tensor) -> TreeBuffers:
    """The one-node tree of plain decoding. roots: (B,)"""
    b = roots.shape[0]
    zeros = torch.zeros(b, 1, dtype=torch.long, device=roots.device)
    ones = torch.ones(b, 1, 1, dtype=torch.bool, device=roots.device)
    return TreeBuffers(roots[:, None], zeros, zeros, ones)


@torch.inference_mode()
def propose(
    heads: DraftHeads | None,
    hidden: torch.Tensor,
    roots: torch.Tensor,
    shape: TreeShape,
    static: StaticTree | None = None,
    chains: list[list[int]] | None = None,
    context: Context | None = None,
    second_chains: list[list[int]] | None = None,
) -> TreeBuffers:
    """Draft one tree per row. hidden: (B, F) features of the last committed token; roots:
    (B,); chains: per row the context-lookup continuation after its root (used up to
    `shape.lookup` tokens); context: what heads with context attention attend over (mask
    (B, 1, L)); second_chains: per row another continuation (the answer datastore's).
    Chains are merged into the heads' tree where they add tokens (`merge_chains`)."""
    if shape.is_plain:
        return root_only(roots)
    if heads is not None and heads.context is not None and context is not None:
        context = heads.context.with_sink(context)  # once per tree, shared by every depth
    if heads is None or shape.head_nodes == 1:
        tree = root_only(roots)
    elif shape.spec is not None:
        compiled = static if static is not None else compile_tree(shape.spec, hidden.device)
        tree = _propose_static(heads, hidden, roots, compiled, context)
    else:
        tree = _propose_dynamic(heads, hidden, roots, shape, context)
    if shape.lookup and chains is not None:
        tree = graft_branches(tree, chains, second_chains or [[] for _ in chains], shape.lookup)
    return tree


def graft_chains(
    tree: TreeBuffers, chains: list[list[int]], attach: list[int] | None = None
) -> TreeBuffers:
    """Append one chain per row, as nodes N .. N+L-1 (L = longest chain), hanging under node
    attach[r] of row r (default: the root).

    Shorter chains are padded by repeating their last token (the root's for an empty chain):
    a padded node is just one more draft, accepted only where the target agrees, so padding
    never changes the output. Duplicates of head-drafted paths are harmless for the same
    reason (the walk keeps the deepest agreeing node). No chain at all: the tree unchanged.
    """
    length = max((len(c) for c in chains), default=0)
    if length == 0:
        return tree
    b, n = tree.tokens.shape
    device = tree.tokens.device
    at = [0] * b if attach is None else [a if c else 0 for a, c in zip(attach, chains)]
    roots = tree.tokens[:, 0].tolist()
    rows = [c + [c[-1] if c else roots[r]] * (length - len(c)) for r, c in enumerate(chains)]
    extra = torch.tensor(rows, dtype=torch.long, device=device)  # (B, L)
    anchor = torch.tensor(at, dtype=torch.long, device=device)  # (B,)
    parents = torch.arange(n - 1, n + length - 1, dtype=torch.long, device=device).expand(b, -1)
    parents = torch.cat([anchor[:, None], parents[:, 1:]], 1)
    base = torch.gather(tree.depths, 1, anchor[:, None])  # (B, 1)
    depths = base + torch.arange(1, length + 1, dtype=torch.long, device=device)
    all_parents = torch.cat([tree.parents, parents], 1)
    all_depths = torch.cat([tree.depths, depths], 1)
    max_depth = int(all_depths.max())
    return TreeBuffers(
        torch.cat([tree.tokens, extra], 1),
        all_parents,
        all_depths,
        ancestor_mask(all_parents, all_depths, max_depth),
    )


def merge_chains(tree: TreeBuffers, chains: list[list[int]]) -> TreeBuffers:
    """Add one chain per row where it departs from the tree: follow the chain down from the
    root through nodes already holding its tokens (head drafts, an earlier chain), then
    graft the rest under the deepest such node (`graft_chains`). A token the tree already
    drafts at that place costs no second node, and a head path the chain continues is
    extended by it."""
    if not any(chains):  # nothing to add: no host copy of the tree (a device sync on GPUs)
        return tree
    tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
    rests, attach = [], []
    for row, chain in enumerate(chains):
        children: dict[tuple[int, int], int] = {}
        for node in range(1, len(tokens[row])):  # first child holding a token wins
            children.setdefault((parents[row][node], tokens[row][node]), node)
        node, shared = 0, 0
        while shared < len(chain) and (node, chain[shared]) in children:
            node = children[node, chain[shared]]
            shared += 1
        rests.append(chain[shared:])
        attach.append(node)
    return graft_chains(tree, rests, attach)


def graft_branches(
    tree: TreeBuffers, first: list[list[int]], second: list[list[int]], length: int
) -> TreeBuffers:
    """Merge two lookup chains per row into the tree (each cut to `length`, see
    `merge_chains`): the context's, then the answer datastore's."""
    tree = merge_chains(tree, [c[:length] for c in first])
    return merge_chains(tree, [c[:length] for c in second])


def _head_log_probs(
    heads: DraftHeads,
    depth: int,
    hidden: torch.Tensor,
    paths: torch.Tensor,
    context: Context | None = None,
) -> torch.Tensor:
    """Log-probs (B, M, Vd) of head `depth` for M paths per row; paths: (B, M, depth+1)."""
    if heads.config.kind == "medusa":  # path-independent: score once per row, share it
        logits = heads.head_logits(depth, hidden[:, None], None)
        return logits.float().log_softmax(-1).expand(-1, paths.shape[1], -1)
    h = hidden[:, None].expand(-1, paths.shape[1], -1)
    return heads.head_logits(depth, h, paths, context).float().log_softmax(-1)


def _propose_dynamic(
    heads: DraftHeads,
    hidden: torch.Tensor,
    roots: torch.Tensor,
    shape: TreeShape,
    context: Context | None = None,
) -> TreeBuffers:
    b = roots.shape[0]
    depth_limit = min(shape.depth, heads.num_heads)
    k = shape.top_k
    device = roots.device
    all_scores, all_parents, all_depths, all_tokens = [], [], [], []
    frontier_paths = roots[:, None, None]  # (B, F, d) tokens from root to frontier node
    frontier_scores = torch.zeros(b, 1, device=device)
    frontier_index = torch.full((b, 1), -1, dtype=torch.long, device=device)
    offset = 0
    floor = math.log(shape.min_prob) if shape.min_prob > 0 else -math.inf
    for d in range(depth_limit):
        if d > 0 and bool((frontier_scores < floor).all()):
            break  # nothing deeper can clear the floor: stop drafting early
        logp = _head_log_probs(heads, d, hidden, frontier_paths, context)  # (B, F, Vd)
        top = torch.topk(logp, k, dim=-1)
        scores = (frontier_scores[:, :, None] + top.values).flatten(1)  # (B, F*k)
        tokens = heads.to_target_ids(top.indices).flatten(1)
        width = frontier_paths.shape[1]
        parents = frontier_index[:, :, None].expand(-1, -1, k).flatten(1)
        all_scores.append(scores)
        all_parents.append(parents)
        all_depths.append(torch.full_like(parents, d + 1))
        all_tokens.append(tokens)
        child_index = offset + torch.arange(width * k, device=device).expand(b, -1)
        offset += width * k
        if d + 1 == depth_limit:
            break
        beam = torch.topk(scores, min(k, width * k), dim=1).indices  # (B, F')
        parent_slot = beam // k
        frontier_paths = torch.cat(
            [
                torch.gather(
                    frontier_paths,
                    1,
                    parent_slot[:, :, None].expand(-1, -1, frontier_paths.shape[2]),
                ),
                torch.gather(tokens, 1, beam)[:, :, None],
            ],
            dim=2,
        )
        frontier_scores = torch.gather(scores, 1, beam)
        frontier_index = torch.gather(child_index, 1, beam)
    scores = torch.cat(all_scores, 1)
    budget = min(shape.head_nodes - 1, scores.shape[1])
    if shape.min_prob > 0:
        # The row with the most likely nodes sets N; other rows fill up with their next best.
        budget = min(budget, int((scores >= floor).sum(1).max()))
        if budget == 0:
            return root_only(roots)
    return select_top_nodes(
        scores,
        torch.cat(all_parents, 1),
        torch.cat(all_depths, 1),
        torch.cat(all_tokens, 1),
        roots,
        budget,
    )


def _propose_static(
    heads: DraftHeads,
    hidden: torch.Tensor,
    roots: torch.Tensor,
    tree: StaticTree,
    context: Context | None = None,
) -> TreeBuffers:
    b, n = roots.shape[0], tree.num_nodes
    tokens = torch.zeros(b, n, dtype=torch.long, device=roots.device)
    tokens[:, 0] = roots
    # paths[:, i] = tokens from the root to node i, filled depth by depth
    paths: dict[int, torch.Tensor] = {0: roots[:, None]}
    by_depth: dict[int, list[int]] = {}
    for i, p in enumerate(tree.paths, start=1):
        by_depth.setdefault(len(p), []).append(i)
    parents = tree.parents.tolist()
    ranks = tree.ranks.tolist()
    for depth in sorted(by_depth):
        if depth > heads.num_heads:
            raise ValueError(f"static tree depth {depth} exceeds the {heads.num_heads} heads")
        nodes = by_depth[depth]
        parent_nodes = sorted({parents[i] for i in nodes})
        parent_paths = torch.stack([paths[p] for p in parent_nodes], 1)  # (B, P, depth)
        logp = _head_log_probs(heads, depth - 1, hidden, parent_paths, context)
        need = max(ranks[i] for i in nodes) + 1
        top = heads.to_target_ids(torch.topk(logp, need, dim=-1).indices)  # (B, P, need)
        slot = {p: j for j, p in enumerate(parent_nodes)}
        for i in nodes:
            tokens[:, i] = top[:, slot[parents[i]], ranks[i]]
            paths[i] = torch.cat([paths[parents[i]], tokens[:, i : i + 1]], 1)
    return TreeBuffers(
        tokens, tree.parents.expand(b, n), tree.depths.expand(b, n), tree.ancestors.expand(b, n, n)
    )
