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
        (1, TreeShape(nodes=16, depth=4, top_k=4)),
        (2, TreeShape(nodes=10, depth=4, top_k=3)),
        (4, TreeShape(nodes=6, depth=3, top_k=2)),
        (8, TreeShape(nodes=4, depth=3, top_k=1)),
    )
)

GPU_POLICY = TreePolicy(
    (
        (1, TreeShape(nodes=48, depth=5, top_k=8)),
        (4, TreeShape(nodes=32, depth=5, top_k=6)),
        (16, TreeShape(nodes=16, depth=4, top_k=4)),
        (32, TreeShape(nodes=8, depth=3, top_k=3)),
    )
)

PLAIN_POLICY = TreePolicy(())
