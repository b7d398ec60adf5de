"""RowKVCache: ragged writes land at each row's length, commit_path compacts per row."""

from __future__ import annotations

import torch

from s4c_engine.kv_cache import RowKVCache
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


def test_select_rows_drops_finished_rows() -> None:
    cache = _cache(3, [2, 4, 6])
    cache.storage[:, :, 2] = 7.0
    cache.select_rows(torch.tensor([2, 0]))
    assert cache.host_lengths == [6, 2] and cache.batch_size == 2
    assert bool((cache.storage[:, :, 0] == 7.0).all())
