"""RowKVCache: ragged writes land at each row's length, commit_path compacts per row."""

from __future__ import annotations

import pytest
import torch

from s4c_engine.kv_cache import RowKVCache, fill_holes
from tests.model_fixtures import tiny_config


def _cache(rows: int, lengths: list[int]) -> RowKVCache:
    cache = RowKVCache.allocate(tiny_config("llama"), rows, 16, device="cpu", dtype=torch.float32)
    cache.advance(lengths)
    return cache


def _kv(b: int, t: int, start: float) -> torch.Tensor:
    # (B, H_kv=2, T, d=8), value = start + row * 100 + token index
    vals = start + torch.arange(b)[:, None] * 100 + torch.arange(t)[None, :]
    return vals[:, None, :, None].expand(b, 2, t, 8).float().clone()


def test_ragged_write_lands_after_each_rows_length() -> None:
    cache = _cache(2, [3, 5])
    assert cache.begin_forward(4) == 9
    keys, _ = cache.write_layer(0, _kv(2, 4, 1000), _kv(2, 4, 2000))
    assert keys.shape == (2, 2, 9, 8)
    assert cache.storage[0, 0, 0, 0, 3:7, 0].tolist() == [1000, 1001, 1002, 1003]
    assert cache.storage[0, 0, 1, 0, 5:9, 0].tolist() == [1100, 1101, 1102, 1103]
    assert cache.storage[0, 1, 1, 1, 5, 0].item() == 2100
    assert cache.host_lengths == [3, 5]  # nothing committed yet


def test_commit_path_compacts_accepted_nodes_per_row() -> None:
    cache = _cache(2, [3, 5])
    cache.begin_forward(4)
    for layer in range(cache.storage.shape[0]):
        cache.write_layer(layer, _kv(2, 4, 1000), _kv(2, 4, 2000))
    # row 0 keeps nodes 0, 2, 3; row 1 keeps node 0 only (padding repeats the last node)
    cache.commit_path(torch.tensor([[0, 2, 3], [0, 0, 0]]), [3, 1])
    assert cache.host_lengths == [6, 6] and cache.lengths.tolist() == [6, 6]
    assert cache.storage[1, 0, 0, 0, 3:6, 0].tolist() == [1000, 1002, 1003]
    assert cache.storage[1, 1, 1, 0, 5, 0].item() == 2100


def test_select_rows_moves_committed_entries_of_moved_rows() -> None:
    cache = _cache(3, [2, 4, 6])
    for row in range(3):
        cache.storage[:, :, row] = float(row + 1)
    cache.select_rows(torch.tensor([2, 0]))
    assert cache.host_lengths == [6, 2] and cache.batch_size == 2
    assert cache.lengths.tolist() == [6, 2]
    # row 2's committed entries (its first 6 slots) now sit in slot 0; slot 1 holds row 0
    assert bool((cache.storage[:, :, 0, :, :6] == 3.0).all())
    assert bool((cache.storage[:, :, 1, :, :2] == 1.0).all())
    assert cache.row_slots == 3  # the buffer is kept for rows that join later


def test_fill_holes_moves_only_the_last_rows() -> None:
    assert fill_holes([0, 1, 2, 3], 4) == [0, 1, 2, 3]
    assert fill_holes([0, 2, 3], 4) == [0, 3, 2]  # row 3 fills the hole at slot 1
    assert fill_holes([3], 4) == [3]
    assert fill_holes([], 4) == []
    assert sorted(fill_holes([1, 4, 5, 7], 8)) == [1, 4, 5, 7]
    order = fill_holes([1, 4, 5, 7], 8)
    assert order[1] == 1  # a survivor inside the new size stays in its slot


def test_rows_join_in_free_slots_through_a_view() -> None:
    cache = RowKVCache.allocate(
        tiny_config("llama"), 1, 8, device="cpu", dtype=torch.float32, row_slots=1
    )
    cache.advance([3])
    cache.storage[:, :, 0, :, :3] = 5.0
    cache.reserve(3, 20)  # more rows and more tokens than allocated: grows, keeps row 0
    assert cache.row_slots >= 3 and cache.capacity >= 20
    assert bool((cache.storage[:, :, 0, :, :3] == 5.0).all())
    joining = cache.join_view(2)
    joining.begin_forward(4)
    for layer in range(cache.buffer.shape[0]):
        joining.write_layer(layer, _kv(2, 4, 1000), _kv(2, 4, 2000))
    joining.advance([4, 2])
    cache.adopt(joining)
    assert cache.host_lengths == [3, 4, 2] and cache.lengths.tolist() == [3, 4, 2]
    # the prefill wrote straight into the shared buffer
    assert cache.storage[0, 0, 1, 0, :4, 0].tolist() == [1000, 1001, 1002, 1003]
    assert cache.storage[1, 1, 2, 0, :2, 0].tolist() == [2100, 2101]


def test_adopt_refuses_a_view_over_other_slots() -> None:
    cache = RowKVCache.allocate(
        tiny_config("llama"), 1, 8, device="cpu", dtype=torch.float32, row_slots=4
    )
    joining = cache.join_view(1)
    cache.reserve(8, 8)  # reallocates: the view now points at the old buffer
    with pytest.raises(ValueError, match="free slots"):
        cache.adopt(joining)
