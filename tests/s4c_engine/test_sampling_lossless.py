"""Speculative sampling reproduces the target distribution (lossless), and typical acceptance
(lossy) only happens when a request asks for it.

The exact law of the first three generated tokens is computed from the tiny model by
enumeration (V = 16, so 4096 sequences); many seeded rows are then sampled speculatively and
compared with a chi-square goodness-of-fit test. Cells with expected count < 5 are pooled.
False-alarm rate: each test rejects a correct sampler with probability ALPHA = 1e-3. The
same check rejects Medusa's typical acceptance (lossy) at p ~ 0, which shows it has power.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from scipy.stats import chi2

from s4c_engine.config import SamplingParams
from s4c_engine.decoding import DecodeOutput, DecodeRequest, decode_batch
from s4c_engine.drafting import TreeShape
from s4c_engine.sampling import processed_probs
from s4c_engine.stopping import StopRule
from s4c_engine.target import Target
from s4c_engine.tree import TreeBuffers
from s4c_engine.tree_policy import TreePolicy
from s4c_engine.verification import accept
from tests.model_fixtures import random_heads, tiny_model

ALPHA = 1e-3
VOCAB = 16
ROWS = 3000
PROMPT = [1, 7, 3]
ALWAYS_SPECULATE = TreePolicy(((10**6, TreeShape(nodes=8, depth=3, top_k=3)),))


def _exact_joint(model: torch.nn.Module, params: SamplingParams) -> torch.Tensor:
    """P(y1, y2, y3 | PROMPT) under the processed target distribution, (V, V, V)."""
    v = VOCAB
    with torch.no_grad():
        grid = torch.cartesian_prod(torch.arange(v), torch.arange(v))  # (V*V, 2)
        seqs = torch.cat([torch.tensor(PROMPT).expand(v * v, -1), grid], 1)
        logits = model(seqs).logits  # (V*V, P+2, V)
        p1 = processed_probs(logits[:1, len(PROMPT) - 1], params)[0]  # (V,)
        p2 = processed_probs(logits[::v, len(PROMPT)], params)  # (V, V): row y1
        p3 = processed_probs(logits[:, len(PROMPT) + 1], params).view(v, v, v)
    return p1[:, None, None] * p2[:, :, None] * p3


def _chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs.flatten().double() * counts.sum()
    observed = counts.flatten().double()
    big = expected >= 5
    exp_cells = torch.cat([expected[big], expected[~big].sum()[None]])
    obs_cells = torch.cat([observed[big], observed[~big].sum()[None]])
    keep = exp_cells > 0
    stat = float(((obs_cells[keep] - exp_cells[keep]) ** 2 / exp_cells[keep]).sum())
    return float(chi2.sf(stat, int(keep.sum()) - 1))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=3, temperature=1.0),
        SamplingParams(max_tokens=3, temperature=0.7, top_k=6, top_p=0.9),
    ],
    ids=["t1", "t0.7-topk-topp"],
)
def test_speculative_sampling_matches_target_distribution(params: SamplingParams) -> None:
    model = tiny_model("llama", vocab_size=VOCAB, seed=5)
    counts, outputs = _sample_first_tokens(model, params, ROWS)
    # The drafts were really tested: many rows got two tokens from one verify step.
    assert sum(o.stats.target_forwards == 2 for o in outputs) > 0.2 * ROWS
    assert _chi_square_p_value(counts, _exact_joint(model, params)) > ALPHA


def test_the_same_check_rejects_lossy_typical_acceptance() -> None:
    """Power check: typical acceptance (asked for explicitly) is lossy, and the test sees it."""
    model = tiny_model("llama", vocab_size=VOCAB, seed=5)
    params = SamplingParams(max_tokens=3, temperature=1.0, acceptance="typical")
    counts, _ = _sample_first_tokens(model, params, 1500)
    assert _chi_square_p_value(counts, _exact_joint(model, params)) < ALPHA


def _sample_first_tokens(
    model: torch.nn.Module, params: SamplingParams, rows: int
) -> tuple[torch.Tensor, list[DecodeOutput]]:
    """Counts (V, V, V) of the first three tokens over `rows` seeded speculative runs."""
    heads = random_heads(model, "s4c", num_heads=3)
    rule = StopRule(frozenset(), 3)
    requests = [DecodeRequest(tuple(PROMPT), replace(params, seed=s), rule) for s in range(rows)]
    outputs = decode_batch(
        Target(model), requests, heads=heads, policy=ALWAYS_SPECULATE, adaptive=False
    )
    counts = torch.zeros(VOCAB, VOCAB, VOCAB)
    for o in outputs:
        counts[tuple(o.token_ids)] += 1
    return counts, outputs


def _two_child_tree() -> TreeBuffers:
    """Root (token 0) with children tokens 1 and 2."""
    tokens = torch.tensor([[0, 1, 2]])
    parents = torch.tensor([[0, 0, 0]])
    depths = torch.tensor([[0, 1, 1]])
    ancestors = torch.tensor([[[1, 0, 0], [1, 1, 0], [1, 0, 1]]], dtype=torch.bool)
    return TreeBuffers(tokens, parents, depths, ancestors)


def test_lossless_accepts_a_child_with_its_target_probability_typical_only_on_request() -> None:
    tree = _two_child_tree()
    logits = torch.full((1, 3, 4), -30.0)
    logits[0, 0, 1] = logits[0, 0, 3] = 0.0  # p_root: token 1 (a child) 0.5, token 3 0.5
    trials = 400

    def accept_rate(params: SamplingParams) -> float:
        hits = 0
        for seed in range(trials):
            u = torch.rand(1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            hits += accept(tree, logits, [params], [u.expand(3)]).accepted[0]
        return hits / trials

    lossless = accept_rate(SamplingParams(temperature=1.0))
    typical = accept_rate(SamplingParams(temperature=1.0, acceptance="typical"))
    assert SamplingParams().acceptance == "lossless"
    # Binomial(400, 0.5): 0.5 +- 0.1 is more than 4 standard deviations.
    assert 0.4 < lossless < 0.6
    assert typical == 1.0  # p(child) = 0.5 clears the typical threshold every time


def test_greedy_walk_stops_at_first_mismatch_and_emits_target_argmax() -> None:
    tree = _two_child_tree()
    logits = torch.full((1, 3, 4), -5.0)
    logits[0, 0, 2] = 5.0  # root's argmax is token 2: the second child is accepted
    logits[0, 2, 3] = 5.0  # after it the target wants 3: the bonus token
    logits[0, 1, 1] = 5.0  # node 1 is off the path and must not matter
    result = accept(tree, logits, [SamplingParams()], [None])
    assert result.accepted == [1]
    assert result.emitted == [[2, 3]]
    assert result.path_nodes.tolist() == [[0, 2]]
    assert result.last_node.tolist() == [2]
