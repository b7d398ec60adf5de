"""Our KV cache: one preallocated (L, 2, B, H_kv, S_max, d) tensor with a length per row.

It plugs into stock HF models through the public `transformers.cache_utils.Cache` interface
(attention layers call `update(k, v, layer_idx)`). A forward writes its T new entries per row
at [len_b, len_b + T) without committing them; the decode loop then commits all of them
(`advance`) or a selected subset (`commit_path`, gather-compaction of an accepted tree path).
Masks and positions are built elsewhere (`attention.py`); stale slots past len_b are never
zeroed, masks hide them.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class RowKVLayer(CacheLayerMixin):
    """One layer's view into the shared storage; writes go where the owning cache says."""

    is_sliding = False

    def __init__(self, owner: RowKVCache, layer_idx: int) -> None:
        super().__init__()
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
    """Preallocated KV storage for B rows with per-row committed lengths.

    storage: (L, 2, B, H_kv, S_max, d). lengths: (B,) long on the storage device, plus a host
    copy (`host_lengths`) so sizes never need a device sync.
    """

    def __init__(self, storage: torch.Tensor, host_lengths: list[int]) -> None:
        num_layers = storage.shape[0]
        super().__init__(layers=[RowKVLayer(self, i) for i in range(num_layers)])
        self.storage = storage
        self.host_lengths = list(host_lengths)
        self.lengths = torch.tensor(host_lengths, dtype=torch.long, device=storage.device)
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
    ) -> RowKVCache:
        """Empty cache for `batch_size` rows of up to `capacity` tokens for a HF model config."""
        num_layers = int(config.num_hidden_layers)  # type: ignore[attr-defined]
        heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)  # type: ignore[attr-defined]
        head_dim = int(
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )  # type: ignore[attr-defined]
        # Zeros, not empty: masked slots are still multiplied by 0 in attention, and
        # uninitialised memory may hold NaN (NaN * 0 = NaN).
        storage = torch.zeros(
            num_layers, 2, batch_size, heads, capacity, head_dim, device=device, dtype=dtype
        )
        return cls(storage, [0] * batch_size)

    @property
    def batch_size(self) -> int:
        return self.storage.shape[2]

    @property
    def capacity(self) -> int:
        return self.storage.shape[4]

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
            offsets = torch.arange(num_new, device=self.storage.device)
            self._write_pos = self.lengths[:, None] + offsets  # (B, T)
            self._write_rows = torch.arange(self.batch_size, device=self.storage.device)[:, None]
        return self.kv_length

    def write_layer(
        self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H_kv, T, d) keys/values of this forward; return this layer's (B, H, S, d)."""
        k_store, v_store = self.storage[layer_idx, 0], self.storage[layer_idx, 1]
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
        self.lengths = torch.tensor(self.host_lengths, dtype=torch.long, device=self.storage.device)

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
        rows = torch.arange(self.batch_size, device=self.storage.device)[:, None]
        src = self.lengths[:, None] + node_index  # (B, A)
        dst = self.lengths[:, None] + torch.arange(width, device=self.storage.device)
        # (L, 2, B, H, S, d)[:, :, rows, :, src] -> (B, A, L, 2, H, d); gathered before writing,
        # so overlapping source and destination slots are safe.
        picked = self.storage[:, :, rows, :, src]
        self.storage[:, :, rows, :, dst] = picked
        self.advance(counts)

    def append_rows(self, other: RowKVCache) -> None:
        """Append other's rows (same model) after ours; capacity becomes the larger one."""
        capacity = max(self.capacity, other.capacity)
        parts = [_with_capacity(self.storage, capacity), _with_capacity(other.storage, capacity)]
        self.storage = torch.cat(parts, dim=2)
        self.host_lengths = [*self.host_lengths, *other.host_lengths]
        self.lengths = torch.cat([self.lengths, other.lengths])

    def select_rows(self, keep: torch.Tensor) -> None:
        """Keep only rows `keep` (1-D long, in new order), e.g. to drop finished rows."""
        keep_list = keep.tolist()
        self.storage = self.storage[:, :, keep].contiguous()
        self.host_lengths = [self.host_lengths[i] for i in keep_list]
        self.lengths = self.lengths[keep]


def _with_capacity(storage: torch.Tensor, capacity: int) -> torch.Tensor:
    """storage (L, 2, B, H, S, d) zero-padded along S to `capacity` slots."""
    missing = capacity - storage.shape[4]
    if missing == 0:
        return storage
    pad = storage.new_zeros(*storage.shape[:4], missing, storage.shape[5])
    return torch.cat([storage, pad], dim=4)
