"""How big a draft tree to verify for a given live batch size.

Verifying B x N tokens is nearly free only while the target forward is memory- or
overhead-bound; past that, speculation costs more than it saves. CPU: on the 2-core Xeon
(Sapphire Rapids) dev VM, fp32 with the narrow linear kernel (prefetching) and the grouped
attention, KV 300, two threads, a forward of the default model costs (ms; rows = batch size,
columns = tokens per row 1/2/4/8/16/32): B=1 30/30/33/38/46/62, B=2 31/33/36/46/63/118, B=4
35/37/48/65/119/180, B=8 43/52/68/123/183/342 (`python -m s4c_engine.calibration`). Past
about 16 rows the CPU is compute-bound, so large batches gain little from drafting. So the
CPU table keeps trees small, drops head nodes the heads are unsure of (`min_prob`: a step
with nothing likely is a plain step) and adds a context-lookup chain, which costs nothing to
draft and adds nodes only when the row's context has a match. Chosen by `python -m
s4c_engine.calibration --sweep` on 14-16 held-out training prompts (never Spec-Bench), fixed
trees, 96 tokens, stage-4 heads, each batch size's candidates interleaved in one run: B=1 16
nodes (top-3, lookup 6, floor 0.05) 2.11x plain decoding vs 2.02x for the earlier 12 nodes
(top-2, floor 0.1; 24 nodes 1.97x); B=2 8 nodes 1.65x (10 and 12 nodes the same within
noise); B=4 6 nodes 1.33x (8 nodes 1.29x); B=8 4 nodes 1.05x (before the kernel prefetched
and the attention stopped copying K/V, every B=8 tree lost to plain decoding), so batches
above 8 decode plainly. GPUs verify far wider trees for free, hence the larger GPU table.
The table is an upper bound: `TreeTuner` measures tokens/s of the candidates during decoding
and runs the best (down to plain decoding).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

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

    @property
    def uses_lookup(self) -> bool:
        return any(s.lookup for _, s in self.table)

    def without_lookup(self) -> TreePolicy:
        """The same tree budgets spent on head drafts alone (rows that would only look up
        decode plainly)."""
        rows = tuple(
            (b, replace(s, lookup=0, nodes=s.head_nodes if s.spec is not None else s.nodes))
            for b, s in self.table
            if s.lookup < s.nodes - 1
        )
        return TreePolicy(rows)

    def lookup_only(self) -> TreePolicy:
        """Context lookup alone, with the same lookup lengths (no heads needed)."""
        rows = tuple((b, TreeShape(nodes=s.lookup + 1, lookup=s.lookup)) for b, s in self.table)
        return TreePolicy(tuple((b, s) for b, s in rows if s.lookup))


CPU_POLICY = TreePolicy(
    (
        (1, TreeShape(nodes=16, depth=4, top_k=3, lookup=6, min_prob=0.05)),
        (2, TreeShape(nodes=8, depth=4, top_k=2, lookup=3, min_prob=0.2)),
        (4, TreeShape(nodes=6, depth=3, top_k=2, lookup=2, min_prob=0.25)),
        (8, TreeShape(nodes=4, depth=3, top_k=2, lookup=1, min_prob=0.3)),
    )
)

GPU_POLICY = TreePolicy(
    (
        (1, TreeShape(nodes=56, depth=5, top_k=8, lookup=8)),
        (4, TreeShape(nodes=38, depth=5, top_k=6, lookup=6)),
        (16, TreeShape(nodes=20, depth=4, top_k=4, lookup=4)),
        (32, TreeShape(nodes=10, depth=3, top_k=3, lookup=2)),
    )
)

PLAIN_POLICY = TreePolicy(())


@dataclass
class _Arm:
    """Decayed sums over the steps an arm ran: its rate is tokens / seconds."""

    tokens: float  # tokens per row, summed
    seconds: float  # step seconds, summed
    weight: float  # steps, summed (same decay)
    last_used: int


@dataclass
class TreeTuner:
    """Picks, per live batch size, the candidate tree with the best measured tokens/second.

    Candidates for batch size B are the policy's shape for B, the smaller shapes the policy
    uses for larger batches, and plain decoding; each is tried once, then the best one runs and
    every `probe_every` steps the least recently used one that could still win is re-measured. So speculation that
    does not pay (weak heads, hard text, a busy CPU) falls back to smaller trees or to plain
    decoding. Outputs are unaffected: every step is exact (greedy) or lossless (sampling).

    An arm's rate is its summed tokens over its summed seconds, older steps decaying by
    `decay` per new step of that arm (~50 steps' memory). Tokens per step are noisy (one
    step accepts nothing, the next six) and follow the text, so a short average (an EMA of
    0.3 before) let a few hard steps push the big tree below plain decoding, which probes
    then hardly corrected: at batch 1 the tuner ran 8% slower than the fixed 12-node tree.
    Mutable state of one decode call or, passed in, of an engine's calls; never global.
    """

    policy: TreePolicy
    probe_every: int = 16
    decay: float = 0.98
    step: int = 0
    arms: dict[tuple[int, TreeShape], _Arm] = field(default_factory=dict)

    def candidates(self, batch_size: int) -> list[TreeShape]:
        """Largest first: the policy's shape for this batch size, smaller ones, then plain."""
        shapes = [s for b, s in self.policy.table if b >= batch_size]
        unique = sorted(set(shapes), key=lambda s: -s.nodes)
        return [*unique, PLAIN]

    def choose(self, batch_size: int) -> TreeShape:
        self.step += 1
        options = self.candidates(batch_size)
        if len(options) == 1:
            return options[0]
        untried = [s for s in options if (batch_size, s) not in self.arms]
        if untried:
            return untried[0]
        best = max(options, key=lambda s: self._rate(batch_size, s))
        if self.step % self.probe_every == 0:
            # Re-measure only arms that could still win: even if every draft were accepted
            # (depth + 1 tokens per step) at their measured step time.
            hopeful = [
                s
                for s in options
                if s == best or self._bound(batch_size, s) > self._rate(batch_size, best)
            ]
            return min(hopeful, key=lambda s: self.arms[batch_size, s].last_used)
        return best

    def record(
        self, batch_size: int, shape: TreeShape, tokens_per_row: float, seconds: float
    ) -> None:
        arm = self.arms.get((batch_size, shape))
        if arm is None:
            self.arms[batch_size, shape] = _Arm(tokens_per_row, seconds, 1.0, self.step)
            return
        arm.tokens = self.decay * arm.tokens + tokens_per_row
        arm.seconds = self.decay * arm.seconds + seconds
        arm.weight = self.decay * arm.weight + 1.0
        arm.last_used = self.step

    def _bound(self, batch_size: int, shape: TreeShape) -> float:
        depth = shape.spec.depth if shape.spec is not None else shape.depth
        if shape.head_nodes == 1:  # lookup only: the heads' depth is never drafted
            depth = 0
        steps = 1 if shape.is_plain else max(depth, shape.lookup) + 1
        arm = self.arms[batch_size, shape]
        return steps / max(arm.seconds / arm.weight, 1e-9)

    def _rate(self, batch_size: int, shape: TreeShape) -> float:
        arm = self.arms[batch_size, shape]
        return arm.tokens / max(arm.seconds, 1e-9)
