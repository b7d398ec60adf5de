"""How big a draft tree to verify for a given live batch size.

Verifying B x N tokens is nearly free only while the target forward is memory- or
overhead-bound; past that, speculation costs more than it saves. CPU: full forwards of the
default model on the 2-core dev machine (idle, KV 300, batch 1) cost 41/60/72/100/150 ms for
1/8/16/32/64 tokens, and B rows x N nodes cost about what B*N tokens of one row cost; so the
CPU table keeps B*N near 16 (a verify step at most ~1.8x a plain step) and decodes plainly
above batch 8. Re-measure with `python -m s4c_engine.calibration`. GPUs verify far wider trees
for free, hence the larger GPU table.
"""

from __future__ import annotations

from dataclasses import dataclass

from s4c_engine.drafting import TreeShape

PLAIN = TreeShape(nodes=1)


@dataclass(frozen=True)
class TreePolicy:
    """(max_batch_size, shape) rows in increasing batch size; larger batches decode plainly."""

    table: tuple[tuple[int, TreeShape], ...]

    def shape_for(self, batch_size: int) -> TreeShape:
        for max_batch, shape in self.table:
            if batch_size <= max_batch:
                return shape
        return PLAIN

    @property
    def max_nodes(self) -> int:
        return max((s.nodes for _, s in self.table), default=1)


CPU_POLICY = TreePolicy(
    (
        (1, TreeShape(nodes=16, depth=4, top_k=4, step_cost=1.9)),
        (2, TreeShape(nodes=10, depth=4, top_k=3, step_cost=1.9)),
        (4, TreeShape(nodes=6, depth=3, top_k=2, step_cost=1.8)),
        (8, TreeShape(nodes=4, depth=3, top_k=1, step_cost=1.8)),
    )
)

GPU_POLICY = TreePolicy(
    (
        (1, TreeShape(nodes=48, depth=5, top_k=8, step_cost=1.3)),
        (4, TreeShape(nodes=32, depth=5, top_k=6, step_cost=1.3)),
        (16, TreeShape(nodes=16, depth=4, top_k=4, step_cost=1.3)),
        (32, TreeShape(nodes=8, depth=3, top_k=3, step_cost=1.3)),
    )
)

PLAIN_POLICY = TreePolicy(())


@dataclass
class SpeculationGate:
    """Falls back to plain steps while speculation does not pay (weak heads, hard text).

    Tracks an exponential moving average of tokens per speculative step; when it drops below
    the tree's step_cost, the next `backoff` steps decode plainly, then one speculative step
    probes again. Greedy output is unaffected (every step is exact), and so is the sampling
    distribution (every step is lossless). Mutable per decode call; passed in, never global.
    """

    tau: float = 3.0  # optimistic start: speculate first, learn from what is accepted
    backoff: int = 16
    plain_left: int = 0

    def choose(self, shape: TreeShape) -> TreeShape:
        if shape.is_plain or self.plain_left == 0:
            return shape
        self.plain_left -= 1
        return PLAIN

    def record(self, tokens_per_step: float, shape: TreeShape) -> None:
        self.tau = 0.7 * self.tau + 0.3 * tokens_per_step
        if self.tau < shape.step_cost:
            self.plain_left = self.backoff
            self.tau = shape.step_cost  # one good probe is enough to resume
