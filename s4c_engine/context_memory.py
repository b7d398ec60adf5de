"""Per-request context memory of heads with context attention (`HeadConfig.context_heads`).

Every committed position p of a request (p >= the heads' `context_start`) becomes one entry,
the key and value `DraftHeads.context_entries` makes of (h_p, x_p, x_{p+1}); the heads attend
over a row's entries when they draft its tree. Entries are made once, when the position is
committed: the prompt's at prefill (x_{p+1} of the last prompt position is the first token
chosen), then, at each step, those of the accepted path (the root and the accepted drafts,
x_{p+1} being the next emitted token). Nothing is recomputed per step; a row's memory leaves
with the row.
"""

from __future__ import annotations

import torch

from s4c_engine.heads import Context


class RowContext:
    """One request's entries: keys and values (capacity, A), the first `length` filled."""

    def __init__(self, capacity: int, width: int, device: torch.device, dtype: torch.dtype) -> None:
        self.keys = torch.empty(max(1, capacity), width, device=device, dtype=dtype)
        self.values = torch.empty_like(self.keys)
        self.length = 0

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Add n entries (n, A) after the filled ones (the buffers grow when full)."""
        n = int(keys.shape[0])
        end = self.length + n
        if end > self.keys.shape[0]:
            size = max(end, 2 * int(self.keys.shape[0]))
            for name in ("keys", "values"):
                old = getattr(self, name)
                new = old.new_empty(size, old.shape[1])
                new[: self.length] = old[: self.length]
                setattr(self, name, new)
        self.keys[self.length : end] = keys
        self.values[self.length : end] = values
        self.length = end


def batch_context(rows: list[RowContext]) -> Context:
    """The live rows' memories as one `Context` (B, L, A), padded to the longest, with mask
    (B, 1, L). A single row is a view of its buffers (no copy)."""
    longest = max(r.length for r in rows)
    first = rows[0]
    if len(rows) == 1:
        mask = torch.ones(1, 1, longest, dtype=torch.bool, device=first.keys.device)
        return Context(first.keys[None, :longest], first.values[None, :longest], mask)
    width = int(first.keys.shape[1])
    keys = first.keys.new_zeros(len(rows), longest, width)
    values = torch.zeros_like(keys)
    lengths = torch.tensor([r.length for r in rows], device=first.keys.device)
    for b, row in enumerate(rows):
        keys[b, : row.length] = row.keys[: row.length]
        values[b, : row.length] = row.values[: row.length]
    mask = torch.arange(longest, device=first.keys.device)[None, :] < lengths[:, None]
    return Context(keys, values, mask[:, None, :])
