"""Tree compilation and dynamic top-N selection are pure functions with exact answers."""

from __future__ import annotations

import pytest
import torch

from s4c_engine.tree import TreeSpec, ancestor_mask, compile_tree, select_top_nodes


def test_compile_tree_orders_nodes_and_builds_ancestor_mask() -> None:
    spec = TreeSpec(((1,), (0,), (0, 0), (0, 1), (0, 0, 0)))
    tree = compile_tree(spec)
    assert tree.paths == ((0,), (1,), (0, 0), (0, 1), (0, 0, 0))
    assert tree.parents.tolist() == [0, 0, 0, 1, 1, 3]
    assert tree.depths.tolist() == [0, 1, 1, 2, 2, 3]
    assert tree.ranks.tolist() == [0, 0, 1, 0, 1, 0]
    # node 5 = path (0,0,0): ancestors root, (0,), (0,0) and itself
    assert tree.ancestors[5].tolist() == [True, True, False, True, False, True]
    assert tree.ancestors[2].tolist() == [True, False, True, False, False, False]
    assert tree.num_nodes == spec.num_nodes == 6


def test_tree_spec_rejects_orphans_and_duplicates() -> None:
    with pytest.raises(ValueError, match="parent"):
        TreeSpec(((0, 1),))
    with pytest.raises(ValueError, match="duplicate"):
        TreeSpec(((0,), (0,)))


def test_ancestor_mask_from_parent_pointers_per_row() -> None:
    parents = torch.tensor([[0, 0, 1, 2], [0, 0, 0, 1]])
    mask = ancestor_mask(parents, torch.zeros_like(parents), 3)
    assert mask[0, 3].tolist() == [True, True, True, True]
    assert mask[1, 3].tolist() == [True, True, False, True]
    assert mask[1, 2].tolist() == [True, False, True, False]


def test_select_top_nodes_keeps_a_connected_tree_per_row() -> None:
    # candidates: 0,1 children of root; 2,3 children of 0; 4 child of 1
    scores = torch.tensor([[-0.1, -2.0, -0.3, -0.2, -2.1], [-3.0, -0.1, -3.1, -3.2, -0.2]])
    parents = torch.tensor([[-1, -1, 0, 0, 1]] * 2)
    depths = torch.tensor([[1, 1, 2, 2, 2]] * 2)
    tokens = torch.tensor([[10, 11, 12, 13, 14]] * 2)
    tree = select_top_nodes(scores, parents, depths, tokens, torch.tensor([7, 8]), budget=3)
    assert tree.tokens.tolist() == [[7, 10, 12, 13], [8, 10, 11, 14]]
    assert tree.parents.tolist() == [[0, 0, 1, 1], [0, 0, 0, 2]]
    assert tree.depths.tolist() == [[0, 1, 2, 2], [0, 1, 1, 2]]
    assert tree.ancestors[1, 3].tolist() == [True, False, True, True]


def test_select_top_nodes_prefers_parent_on_equal_scores() -> None:
    # A child with q = 1 has exactly its parent's score; the parent must still be kept.
    scores = torch.tensor([[-0.5, -0.5, -0.4]])
    parents = torch.tensor([[-1, 0, -1]])
    depths = torch.tensor([[1, 2, 1]])
    tree = select_top_nodes(
        scores, parents, depths, torch.tensor([[1, 2, 3]]), torch.tensor([0]), budget=2
    )
    assert tree.tokens.tolist() == [[0, 1, 3]]
