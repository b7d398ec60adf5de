"""Our KV cache: one preallocated (L, 2, R, H_kv, S_max, d) tensor with a length per row.

It plugs into stock HF models through the public `transformers.cache_utils.Cache` interface
(attention layers call `update(k, v, layer_idx)`). A forward writes its T new entries per row
at [len_b, len_b + T) without committing them; the decode loop then commits all of them
(`advance`) or a selected subset (`commit_path`, gather-compaction of an accepted tree path).
Rows join and leave a running batch in place (free slots, holes filled by the last rows).
Masks and positions are built elsewhere (`attention.py`); stale slots past len_b are never
zeroed, masks hide them.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


# transformers leaves CacheLayerMixin's __init_subclass__ and __init__ unannotated
class RowKVLayer(CacheLayerMixin):  # type: ignore[no-untyped-call]
    """One layer's view into the shared storage; writes go where the owning cache says."""

    is_sliding = False

    def __init__(self, owner: RowKVCache, layer_idx: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.owner = owner
        self.layer_idx = layer_idx
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.owner.write_layer(self.layer_idx, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.kv_length, 0

    def get_seq_length(self) -> int:
        return self.owner.max_length

    def get_max_length(self) -> int:
        return self.owner.capacity


class RowKVCache(Cache):
    """Preallocated KV storage for B live rows with per-row committed lengths.

    buffer: (L, 2, R, H_kv, S_max, d) with R >= B row slots; rows 0..B-1 are live and
    `storage` is the view of them. Rows join in free slots (`reserve` + `join_view` +
    `adopt`) and leave by moving survivors into the holes (`select_rows`), so a batch whose
    membership changes every few steps copies only the rows that move, never the whole
    cache. lengths: (B,) long on the storage device, plus a host copy (`host_lengths`) so
    sizes never need a device sync.
    """

    def __init__(self, buffer: torch.Tensor, host_lengths: list[int]) -> None:
        num_layers = buffer.shape[0]
        super().__init__(layers=[RowKVLayer(self, i) for i in range(num_layers)])
        if len(host_lengths) > buffer.shape[2]:
            raise ValueError("more rows than the buffer has slots")
        self.buffer = buffer
        self.host_lengths = list(host_lengths)
        self.lengths = torch.tensor(host_lengths, dtype=torch.long, device=buffer.device)
        self.kv_length = 0
        self._write_rows: torch.Tensor | None = None
        self._write_pos: torch.Tensor | None = None
        self._write_start: int | None = None

    @classmethod
    def allocate(
        cls,
        config: object,
        batch_size: int,
        capacity: int,
        *,
        device: torch.device | str,
        dtype: torch.dtype,
        row_slots: int | None = None,
    ) -> RowKVCache:
        """Empty cache of `batch_size` live rows (room for `row_slots`, default the same) of
        up to `capacity` tokens each, for a HF model config."""
        slots = max(batch_size, row_slots or 0)
        buffer = _zeros(_geometry(config), slots, capacity, device, dtype)
        return cls(buffer, [0] * batch_size)

    @property
    def storage(self) -> torch.Tensor:
        """(L, 2, B, H_kv, S_max, d): the live rows (a view into the buffer)."""
        return self.buffer[:, :, : len(self.host_lengths)]

    @property
    def batch_size(self) -> int:
        return len(self.host_lengths)

    @property
    def capacity(self) -> int:
        return self.buffer.shape[4]

    @property
    def row_slots(self) -> int:
        return self.buffer.shape[2]

    @property
    def max_length(self) -> int:
        return max(self.host_lengths, default=0)

    # ---- one forward -------------------------------------------------------------------------

    def begin_forward(self, num_new: int) -> int:
        """Prepare to write `num_new` entries per row at [len_b, len_b + num_new).

        Returns the key length the attention will see (max_b len_b + num_new); the 4-D mask
        passed to the model must have that many key columns.
        """
        self.kv_length = self.max_length + num_new
        if self.kv_length > self.capacity:
            raise RuntimeError(f"KV cache full ({self.kv_length} > {self.capacity})")
        if min(self.host_lengths) == self.max_length:  # all rows aligned: one slice write
            self._write_start = self.max_length
            self._write_rows = self._write_pos = None
        else:
            self._write_start = None
            offsets = torch.arange(num_new, device=self.buffer.device)
            self._write_pos = self.lengths[:, None] + offsets  # (B, T)
            self._write_rows = torch.arange(self.batch_size, device=self.buffer.device)[:, None]
        return self.kv_length

    def write_layer(
        self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H_kv, T, d) keys/values of this forward; return this layer's (B, H, S, d)."""
        b = self.batch_size
        k_store, v_store = self.buffer[layer_idx, 0, :b], self.buffer[layer_idx, 1, :b]
        if self._write_start is not None:
            start, end = self._write_start, self._write_start + keys.shape[2]
            k_store[:, :, start:end] = keys
            v_store[:, :, start:end] = values
        else:
            # Advanced indices separated by a slice put their dims first: (B, T, H, d).
            k_store[self._write_rows, :, self._write_pos] = keys.transpose(1, 2)
            v_store[self._write_rows, :, self._write_pos] = values.transpose(1, 2)
        return k_store[:, :, : self.kv_length], v_store[:, :, : self.kv_length]

    # ---- commit ------------------------------------------------------------------------------

    def advance(self, counts: list[int]) -> None:
        """Commit the first counts[b] entries written by the last forward of each row."""
        self.host_lengths = [n + c for n, c in zip(self.host_lengths, counts)]
        self.lengths = torch.tensor(self.host_lengths, dtype=torch.long, device=self.buffer.device)

    def commit_path(self, node_index: torch.Tensor, counts: list[int]) -> None:
        """Keep, per row, the entries of the accepted path and drop the rest of the tree.

        node_index: (B, A) long, offsets into the last forward's block ([len_b, len_b + T)) of
        the accepted nodes in path order; only the first counts[b] of row b are kept. They are
        gathered and written to [len_b, len_b + counts[b]), then len_b += counts[b].
        """
        width = node_index.shape[1]
        if width == 1:  # only the root (node 0, already at slot len_b): nothing moves
            self.advance(counts)
            return
        storage = self.storage
        rows = torch.arange(self.batch_size, device=self.buffer.device)[:, None]
        src = self.lengths[:, None] + node_index  # (B, A)
        dst = self.lengths[:, None] + torch.arange(width, device=self.buffer.device)
        # (L, 2, B, H, S, d)[:, :, rows, :, src] -> (B, A, L, 2, H, d); gathered before writing,
        # so overlapping source and destination slots are safe.
        picked = storage[:, :, rows, :, src]
        storage[:, :, rows, :, dst] = picked
        self.advance(counts)

    # ---- rows joining and leaving ------------------------------------------------------------

    def reserve(self, rows: int, capacity: int) -> None:
        """Make room for `rows` live rows of `capacity` tokens (grows by at least half, so a
        stream of joins reallocates rarely); live rows keep their contents."""
        if rows <= self.row_slots and capacity <= self.capacity:
            return
        slots = self.row_slots if rows <= self.row_slots else max(rows, self.row_slots * 3 // 2)
        span = self.capacity if capacity <= self.capacity else max(capacity, self.capacity * 3 // 2)
        geometry = (self.buffer.shape[0], self.buffer.shape[3], self.buffer.shape[5])
        buffer = _zeros(geometry, slots, span, self.buffer.device, self.buffer.dtype)
        used = self.max_length
        buffer[:, :, : self.batch_size, :, :used] = self.storage[:, :, :, :, :used]
        self.buffer = buffer

    def join_view(self, rows: int) -> RowKVCache:
        """An empty cache over the next `rows` free slots (after `reserve`): a prefill through
        it writes straight into this cache's buffer; `adopt` then makes those rows live."""
        start = self.batch_size
        if start + rows > self.row_slots:
            raise RuntimeError("reserve room before joining rows")
        return RowKVCache(self.buffer[:, :, start : start + rows], [0] * rows)

    def adopt(self, view: RowKVCache) -> None:
        """Make the rows prefilled through `join_view` live, after the current ones."""
        if view.buffer.data_ptr() != self.buffer[:, :, self.batch_size].data_ptr():
            raise ValueError("the view is not over this cache's next free slots")
        self.host_lengths = [*self.host_lengths, *view.host_lengths]
        self.lengths = torch.cat([self.lengths, view.lengths])

    def select_rows(self, keep: torch.Tensor) -> None:
        """Keep only rows `keep` (1-D long, in new order), e.g. to drop finished rows. Only
        rows whose slot changes are copied (their committed entries only)."""
        keep_list = [int(i) for i in keep.tolist()]
        moves = [(dst, src) for dst, src in enumerate(keep_list) if dst != src]
        if moves:
            used = max(self.host_lengths[src] for _, src in moves)
            dst_idx = torch.tensor([d for d, _ in moves], device=self.buffer.device)
            src_idx = torch.tensor([s for _, s in moves], device=self.buffer.device)
            # The right side is gathered (a copy) before the write, so chains of moves are safe.
            self.buffer[:, :, dst_idx, :, :used] = self.buffer[:, :, src_idx, :, :used]
        self.host_lengths = [self.host_lengths[i] for i in keep_list]
        self.lengths = self.lengths[keep]


def fill_holes(keep: list[int], size: int) -> list[int]:
    """An order of the surviving rows `keep` (ascending indices into `size` rows) in which
    as few rows as possible change slot: survivors stay put, the last ones fill the holes."""
    count = len(keep)
    staying = [i for i in keep if i < count]
    movers = [i for i in keep if i >= count]
    taken = set(staying)
    order = []
    for slot in range(count):
        order.append(slot if slot in taken else movers.pop())
    return order


def _geometry(config: object) -> tuple[int, int, int]:
    """(layers, KV heads, head dim) of a HF model config."""
    num_layers = int(config.num_hidden_layers)  # type: ignore[attr-defined]
    heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)  # type: ignore[attr-defined]
    head_dim = int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads  # type: ignore[attr-defined]
    )
    return num_layers, heads, head_dim


def _zeros(
    geometry: tuple[int, int, int],
    slots: int,
    capacity: int,
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    # Zeros, not empty: masked slots are still multiplied by 0 in attention, and
    # uninitialised memory may hold NaN (NaN * 0 = NaN).
    layers, heads, head_dim = geometry
    return torch.zeros(layers, 2, slots, heads, capacity, head_dim, device=device, dtype=dtype)
