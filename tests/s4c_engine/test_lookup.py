"""Context lookup drafts: the n-gram index, the grafted chain, and exactness with it."""

from __future__ import annotations

import torch

from s4c_engine.config import SamplingParams
from s4c_engine.decoding import DecodeRequest, decode_batch
from s4c_engine.drafting import TreeShape, graft_chains, propose, root_only
from s4c_engine.lookup import NgramLookup
from s4c_engine.stopping import StopRule
from s4c_engine.target import Target
from s4c_engine.tree_policy import CPU_POLICY, TreePolicy
from tests.model_fixtures import random_heads, tiny_model


def test_lookup_continues_the_latest_earlier_occurrence_of_the_longest_suffix() -> None:
    look = NgramLookup([5, 6, 7, 8, 9, 1, 6, 7, 3, 4])
    assert look.propose(3) == []  # suffix (3, 4) never occurred before
    look.extend([5, 6, 7])
    # (5, 6, 7) occurred at 0 and continued 8, 9, 1; the shorter (6, 7) at 6 would say 3.
    assert look.propose(3) == [8, 9, 1]
    look.extend([3])
    # (6, 7, 3) occurred at 6 and continued 4, 5, 6 ...
    assert look.propose(2) == [4, 5]
    # Continuations stop at the end of what is known.
    assert NgramLookup([1, 2, 9, 1, 2]).propose(5) == [9, 1, 2]


def test_grafted_chain_hangs_under_the_root_and_pads_short_rows() -> None:
    tree = root_only(torch.tensor([10, 20]))
    out = graft_chains(tree, [[11, 12, 13], []])
    assert out.tokens.tolist() == [[10, 11, 12, 13], [20, 20, 20, 20]]
    assert out.parents.tolist() == [[0, 0, 1, 2]] * 2
    assert out.depths.tolist() == [[0, 1, 2, 3]] * 2
    assert out.ancestors[0, 3].tolist() == [True, True, True, True]
    assert out.ancestors[0, 1].tolist() == [True, True, False, False]
    assert graft_chains(tree, [[], []]) is tree


def test_propose_adds_the_lookup_chain_after_the_heads_nodes() -> None:
    model = tiny_model("llama")
    heads = random_heads(model, "s4c")
    shape = TreeShape(nodes=9, depth=3, top_k=2, lookup=3)
    hidden = torch.randn(2, 32)
    tree = propose(heads, hidden, torch.tensor([4, 5]), shape, chains=[[7, 8, 9, 10], [7]])
    assert tree.num_nodes == 9
    assert tree.tokens[0, 6:].tolist() == [7, 8, 9] and tree.tokens[1, 6:].tolist() == [7, 7, 7]
    assert tree.depths[0, 6:].tolist() == [1, 2, 3]
    without = propose(heads, hidden, torch.tensor([4, 5]), shape, chains=[[], []])
    assert without.num_nodes == 6


def _requests(prompts: list[list[int]], max_tokens: int = 40) -> list[DecodeRequest]:
    return [
        DecodeRequest(
            tuple(p), SamplingParams(max_tokens=max_tokens), StopRule(frozenset(), max_tokens)
        )
        for p in prompts
    ]


def test_decoding_with_lookup_is_exact_and_accepts_repeats() -> None:
    model = tiny_model("llama", seed=4)
    target = Target(model)
    # Repetitive prompts: a random tiny model falls into loops, which lookup drafts well.
    prompts = [[3, 4, 5, 6] * 6, [9, 8, 7] * 5 + [1], [2] * 12]
    plain = [list(o.token_ids) for o in decode_batch(target, _requests(prompts))]
    heads = random_heads(model, "s4c")
    for policy in (CPU_POLICY, CPU_POLICY.lookup_only()):
        outs = decode_batch(target, _requests(prompts), heads=heads, policy=policy, adaptive=False)
        assert [list(o.token_ids) for o in outs] == plain
    lookup_alone = decode_batch(
        target, _requests(prompts), policy=CPU_POLICY.lookup_only(), adaptive=False
    )
    assert [list(o.token_ids) for o in lookup_alone] == plain
    # Without heads every accepted draft token came from the context lookup.
    assert all(o.stats.tau > 1.3 for o in lookup_alone), [o.stats.tau for o in lookup_alone]


def test_policy_variants_keep_budgets() -> None:
    plain_heads = CPU_POLICY.without_lookup()
    assert not plain_heads.uses_lookup and CPU_POLICY.uses_lookup
    assert plain_heads.table[0][1].nodes == CPU_POLICY.table[0][1].nodes
    only = CPU_POLICY.lookup_only()
    assert all(s.head_nodes == 1 and s.lookup for _, s in only.table)
    assert isinstance(only, TreePolicy)


def test_probability_floor_shrinks_the_heads_tree_and_stays_exact() -> None:
    model = tiny_model("llama", seed=5)
    heads = random_heads(model, "s4c")
    hidden, roots = torch.randn(2, 32), torch.tensor([4, 5])
    full = propose(heads, hidden, roots, TreeShape(nodes=8, depth=3, top_k=2, min_prob=1e-9))
    assert full.num_nodes == 8
    # Nothing is certain: the floor leaves the root alone (a plain step).
    assert propose(heads, hidden, roots, TreeShape(nodes=8, min_prob=1.0)).num_nodes == 1
    floor = TreeShape(nodes=8, depth=3, top_k=2, min_prob=0.05)
    kept = propose(heads, hidden, roots, floor)
    assert 1 <= kept.num_nodes <= 8
    target = Target(model)
    prompts = [[1, 5, 9, 3], [7, 7, 2]]
    plain = [list(o.token_ids) for o in decode_batch(target, _requests(prompts))]
    policy = TreePolicy(((4, floor),))
    outs = decode_batch(target, _requests(prompts), heads=heads, policy=policy, adaptive=False)
    assert [list(o.token_ids) for o in outs] == plain


def test_tuner_bound_of_a_lookup_only_tree_counts_the_chain_not_the_heads_depth() -> None:
    from s4c_engine.tree_policy import TreeTuner

    shape = TreeShape(nodes=3, lookup=2)  # depth defaults to 4 but no head node is drafted
    tuner = TreeTuner(TreePolicy(((8, shape),)))
    tuner.record(1, shape, 1.0, 0.5)
    assert tuner._bound(1, shape) == 3 / 0.5  # at most root + 2 lookup tokens per step


def test_second_chain_grafts_only_what_it_adds_under_the_last_shared_node() -> None:
    from s4c_engine.drafting import graft_branches

    tree = root_only(torch.tensor([10, 20, 30]))
    # Row 0: the second chain shares 11, 12 then departs: 14 hangs under node 2 (the 12).
    # Row 1: no context chain, the second chain hangs under the root.
    # Row 2: the second chain repeats the first: nothing added (padding under the root).
    out = graft_branches(tree, [[11, 12, 13], [], [31, 32]], [[11, 12, 14, 15], [21], [31]], 6)
    assert out.tokens[0].tolist() == [10, 11, 12, 13, 14, 15]
    assert out.parents[0].tolist() == [0, 0, 1, 2, 2, 4]
    assert out.depths[0].tolist() == [0, 1, 2, 3, 3, 4]
    assert out.ancestors[0, 5].tolist() == [True, True, True, False, True, True]
    assert out.tokens[1].tolist() == [20, 20, 20, 20, 21, 21]
    assert out.parents[1, 4:].tolist() == [0, 4] and out.depths[1, 4:].tolist() == [1, 2]
    assert out.tokens[2, 4:].tolist() == [30, 30] and out.parents[2, 4].item() == 0
    # Chains are cut to the tree's lookup length first.
    cut = graft_branches(tree, [[11, 12, 13], [], []], [[11, 19], [], []], 2)
    assert cut.tokens[0].tolist() == [10, 11, 12, 19] and cut.parents[0].tolist() == [0, 0, 1, 1]


def test_chains_merge_into_the_heads_tree_and_extend_its_paths() -> None:
    from s4c_engine.drafting import merge_chains
    from s4c_engine.tree import TreeBuffers, ancestor_mask

    # Head drafts: root 10 -> 11 (node 1) -> 13 (node 3), root -> 12 (node 2); two rows.
    parents = torch.tensor([[0, 0, 0, 1]] * 2)
    depths = torch.tensor([[0, 1, 1, 2]] * 2)
    tokens = torch.tensor([[10, 11, 12, 13], [10, 11, 12, 13]])
    tree = TreeBuffers(tokens, parents, depths, ancestor_mask(parents, depths, 2))
    out = merge_chains(tree, [[11, 13, 14, 15], [12, 5]])
    # Row 0 follows 11 -> 13 and extends that head path by 14, 15 (depths 3, 4).
    assert out.tokens[0, 4:].tolist() == [14, 15]
    assert out.parents[0, 4:].tolist() == [3, 4] and out.depths[0, 4:].tolist() == [3, 4]
    assert out.ancestors[0, 5].tolist() == [True, True, False, True, True, True]
    # Row 1 shares the 12 and adds 5 under it, padded with its repeat to the longest rest.
    assert out.tokens[1, 4:].tolist() == [5, 5]
    assert out.parents[1, 4:].tolist() == [2, 4] and out.depths[1, 4:].tolist() == [2, 3]
    # A chain the tree already holds adds nothing.
    assert merge_chains(tree, [[11, 13], [12]]) is tree


def test_propose_merges_a_chain_the_heads_already_drafted_into_their_nodes() -> None:
    model = tiny_model("llama")
    heads = random_heads(model, "s4c")
    shape = TreeShape(nodes=10, depth=3, top_k=2, lookup=4)  # room for a depth-3 path + 1
    hidden, roots = torch.randn(2, 32), torch.tensor([4, 5])
    alone = propose(heads, hidden, roots, shape)
    # Per row, the heads' own path to their last node, as a lookup chain: nothing to add.
    chains = []
    for row in range(2):
        node, path = alone.num_nodes - 1, []
        while node:
            path.insert(0, int(alone.tokens[row, node]))
            node = int(alone.parents[row, node])
        chains.append(path)
    same = propose(heads, hidden, roots, shape, chains=chains)
    assert same.num_nodes == alone.num_nodes and torch.equal(same.tokens, alone.tokens)
    # The same path continued by one more token: only that token is added, under its end.
    longer = propose(heads, hidden, roots, shape, chains=[[*c, 9] for c in chains])
    assert longer.num_nodes == alone.num_nodes + 1
    assert longer.tokens[:, -1].tolist() == [9, 9]
    assert longer.parents[:, -1].tolist() == [alone.num_nodes - 1] * 2
