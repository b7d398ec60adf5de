"""Tree size follows the batch size; the speculation gate backs off when drafts do not pay."""

from __future__ import annotations

from s4c_engine.config import SamplingParams
from s4c_engine.decoding import DecodeRequest, decode_batch
from s4c_engine.drafting import TreeShape
from s4c_engine.stopping import StopRule
from s4c_engine.target import Target
from s4c_engine.tree_policy import CPU_POLICY, PLAIN, SpeculationGate, TreePolicy
from tests.model_fixtures import random_heads, tiny_model


def test_tree_shrinks_with_batch_size_down_to_plain_decoding() -> None:
    sizes = [CPU_POLICY.shape_for(b).nodes for b in (1, 2, 4, 8, 16, 64)]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] > 1 and CPU_POLICY.shape_for(64) == PLAIN


def test_gate_falls_back_when_tau_is_below_step_cost_and_probes_again() -> None:
    shape = TreeShape(nodes=8, step_cost=2.0)
    gate = SpeculationGate(tau=2.0, backoff=3)
    assert gate.choose(shape) == shape
    gate.record(1.0, shape)  # 0.7*2 + 0.3*1 = 1.7 < 2.0: back off
    assert [gate.choose(shape).is_plain for _ in range(4)] == [True, True, True, False]
    gate.record(3.0, shape)  # a good probe resumes speculation
    assert gate.choose(shape) == shape


def test_costly_trees_with_useless_heads_mostly_decode_plainly_and_stay_exact() -> None:
    model = tiny_model("qwen2")
    target = Target(model)
    heads = random_heads(model, scale=1.0)  # drafts that are nearly always wrong
    expensive = TreePolicy(((8, TreeShape(nodes=8, depth=3, top_k=2, step_cost=5.0)),))
    request = DecodeRequest((1, 2, 3), SamplingParams(max_tokens=60), StopRule(frozenset(), 60))
    plain = decode_batch(target, [request])[0]
    gated = decode_batch(target, [request], heads=heads, policy=expensive)[0]
    ungated = decode_batch(target, [request], heads=heads, policy=expensive, adaptive=False)[0]
    assert gated.token_ids == plain.token_ids == ungated.token_ids
    speculative_steps = gated.stats.attempted_per_depth[0]
    assert speculative_steps < ungated.stats.attempted_per_depth[0] / 3
