"""Draft trees as data, and the pure functions that turn them into tensors.

Node 0 is the root: the last committed-but-uncached token. A static tree is a `TreeSpec` (a
list of paths of per-depth top-k ranks, as in Medusa) compiled once into a `StaticTree`. A
dynamic tree (EAGLE-2 style) is chosen per step from scored candidates by `select_top_nodes`.
Both end up as `TreeBuffers`: tokens, parent pointers, depths and the ancestor mask per row.
Nothing here runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TreeSpec:
    """Static tree: each path lists the top-k rank chosen at depths 1..len(path).

    (0,) is head 0's best token; (0, 1) is its second-best continuation under that token.
    Every prefix of a path must itself be a path.
    """

    paths: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        known = set(self.paths)
        for path in self.paths:
            if not path or min(path) < 0:
                raise ValueError(f"bad tree path {path}")
            if len(path) > 1 and path[:-1] not in known:
                raise ValueError(f"tree path {path} has no parent path {path[:-1]}")
        if len(known) != len(self.paths):
            raise ValueError("duplicate tree paths")

    @property
    def num_nodes(self) -> int:
        return len(self.paths) + 1

    @property
    def depth(self) -> int:
        return max((len(p) for p in self.paths), default=0)

    @classmethod
    def chain(cls, depth: int) -> TreeSpec:
        return cls(tuple((0,) * d for d in range(1, depth + 1)))


@dataclass(frozen=True)
class StaticTree:
    """A compiled TreeSpec; nodes sorted by (depth, path) so parents precede children."""

    paths: tuple[tuple[int, ...], ...]  # node i >= 1 has paths[i - 1]
    parents: torch.Tensor  # (N,) long, root points at itself
    depths: torch.Tensor  # (N,) long
    ranks: torch.Tensor  # (N,) long, rank among the parent's top-k (root: 0)
    ancestors: torch.Tensor  # (N, N) bool, [i, j] = j is an ancestor of i or i itself

    @property
    def num_nodes(self) -> int:
        return self.parents.shape[0]

    @property
    def depth(self) -> int:
        return int(self.depths.max())


@dataclass(frozen=True)
class TreeBuffers:
    """One step's draft tree for every row of the batch."""

    tokens: torch.Tensor  # (B, N) long target ids, column 0 = root
    parents: torch.Tensor  # (B, N) long, root points at itself
    depths: torch.Tensor  # (B, N) long
    ancestors: torch.Tensor  # (B, N, N) bool

    @property
    def num_nodes(self) -> int:
        return self.tokens.shape[1]


def compile_tree(spec: TreeSpec, device: torch.device | str = "cpu") -> StaticTree:
    """Pure: parent pointers, depths, ranks and ancestor mask for a TreeSpec."""
    paths = tuple(sorted(spec.paths, key=lambda p: (len(p), p)))
    index = {p: i + 1 for i, p in enumerate(paths)}
    parents = [0] + [index[p[:-1]] if len(p) > 1 else 0 for p in paths]
    depths = [0] + [len(p) for p in paths]
    ranks = [0] + [p[-1] for p in paths]
    parent_t = torch.tensor(parents, dtype=torch.long, device=device)
    depth_t = torch.tensor(depths, dtype=torch.long, device=device)
    ancestors = ancestor_mask(parent_t[None], depth_t[None], max(depths))[0]
    return StaticTree(
        paths, parent_t, depth_t, torch.tensor(ranks, dtype=torch.long, device=device), ancestors
    )


def ancestor_mask(parents: torch.Tensor, depths: torch.Tensor, max_depth: int) -> torch.Tensor:
    """(B, N, N) bool ancestor-or-self relation from parent pointers (B, N) (root -> itself)."""
    b, n = parents.shape
    mask = torch.eye(n, dtype=torch.bool, device=parents.device).expand(b, n, n).clone()
    hop = torch.arange(n, device=parents.device).expand(b, n)
    for _ in range(max_depth):
        hop = torch.gather(parents, 1, hop)  # ancestor one level further up (root stays root)
        mask.scatter_(2, hop[:, :, None], True)
    return mask


def select_top_nodes(
    scores: torch.Tensor,
    parents: torch.Tensor,
    depths: torch.Tensor,
    tokens: torch.Tensor,
    root_tokens: torch.Tensor,
    budget: int,
) -> TreeBuffers:
    """Keep the `budget` best candidates per row as a connected tree (EAGLE-2 rerank).

    scores: (B, M) cumulative draft log-probabilities; parents: (B, M) candidate index of the
    parent, -1 for children of the root; depths, tokens: (B, M); candidates are listed so that
    parents precede children. A child's score is below its parent's, so any kept node's parent
    is kept too. Returns TreeBuffers with N = budget + 1 nodes in candidate order.
    """
    b, m = scores.shape
    # Strictly below the parent even when q = 1.0 exactly: ties go to the shallower node.
    ranked = scores - 1e-4 * depths.to(scores.dtype)
    keep = torch.topk(ranked, budget, dim=1).indices.sort(dim=1).values  # (B, budget)
    # Candidate index -> new node index (root is node 0, unkept candidates map to 0).
    new_index = torch.zeros(b, m + 1, dtype=torch.long, device=scores.device)
    new_index.scatter_(1, keep + 1, torch.arange(1, budget + 1, device=scores.device).expand(b, -1))
    kept_parents = torch.gather(parents, 1, keep) + 1  # -1 (root) -> 0
    node_parents = torch.gather(new_index, 1, kept_parents)
    zero = torch.zeros(b, 1, dtype=torch.long, device=scores.device)
    node_depths = torch.cat([zero, torch.gather(depths, 1, keep)], 1)
    node_tokens = torch.cat([root_tokens[:, None], torch.gather(tokens, 1, keep)], 1)
    node_parents = torch.cat([zero, node_parents], 1)
    max_depth = int(node_depths.max())
    return TreeBuffers(
        node_tokens, node_parents, node_depths, ancestor_mask(node_parents, node_depths, max_depth)
    )
