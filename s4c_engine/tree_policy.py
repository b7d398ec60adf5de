"""How big a draft tree to verify for a given live batch size.

Verifying B x N tokens is nearly free only while the target forward is memory- or
overhead-bound; past that, speculation costs more than it saves. The table maps batch sizes to
tree shapes and was measured on the 2-core CPU of the dev machine with the default model
(see docs/engine.md); a GPU wants larger trees and gets its own table via `TreePolicy(...)`.
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
        (2, TreeShape(nodes=12, depth=4, top_k=3)),
        (4, TreeShape(nodes=8, depth=3, top_k=3)),
        (8, TreeShape(nodes=4, depth=3, top_k=2)),
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
