"""The distilled dataset in memory: positions, teacher-forced paths and soft targets.

Reads what `distill` wrote (index + shards) into flat arrays over every stored position g:
`hidden[g]` (D) is the target's final hidden state that predicts `token[g]` (the next token of
the sequence: the target's own greedy token on answer positions, the user's text on prompt
positions) and `topk_*[g]` its top-k logits. Samples are concatenated, so the path and the
targets of head i at g are rows g..g+i+1, valid while `depth_left[g] > i + 1`.
`is_answer[g]` marks answer positions (what decoding drafts on; validation scores those).
Also computes the draft vocabulary (most frequent tokens).
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from s4c_engine.training.distill import INDEX_FILE, SHARD_DIR


@dataclass(frozen=True)
class PositionData:
    """Flat per-position arrays of one split; N positions, D hidden, k stored logits.

    hidden (N, D) fp16; token (N,) long; topk_ids (N, k) int32; topk_values (N, k) fp16;
    depth_left (N,) long = positions left in this sample including this one (a sample's
    positions are contiguous: it starts where the previous position's depth_left is 1);
    category (N,) long index into `categories`; is_answer (N,) bool; layers: decoder layer
    index -> (N, D) fp16 outputs of that layer (those the heads use and the shards hold).
    """

    hidden: torch.Tensor
    token: torch.Tensor
    topk_ids: torch.Tensor
    topk_values: torch.Tensor
    depth_left: torch.Tensor
    category: torch.Tensor
    categories: tuple[str, ...]
    num_samples: int
    is_answer: torch.Tensor
    layers: dict[int, torch.Tensor]
    input_token: torch.Tensor  # (N,) long: the token at the position (token[g] follows it)

    @property
    def num_positions(self) -> int:
        return int(self.token.shape[0])


def sample_spans(data: PositionData) -> tuple[torch.Tensor, torch.Tensor]:
    """First position and length (S,) of every sample of a split, in order."""
    left = data.depth_left
    first = torch.ones_like(left, dtype=torch.bool)
    first[1:] = left[:-1] == 1
    starts = torch.nonzero(first).squeeze(1)
    return starts, left[starts]


@dataclass(frozen=True)
class DistilledSplits:
    train: PositionData
    val: PositionData


def read_index(data_dir: Path, limit: int | None = None) -> list[dict[str, object]]:
    """Index records in the order they were written (at most `limit`)."""
    records = []
    with (data_dir / INDEX_FILE).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                records.append(json.loads(line))
                if limit is not None and len(records) >= limit:
                    break
    if not records:
        raise FileNotFoundError(f"no distilled samples in {data_dir}")
    return records


def is_validation(sample_id: str, val_percent: float) -> bool:
    """Stable split by id hash, independent of generation order."""
    return zlib.crc32(sample_id.encode()) % 10_000 < val_percent * 100


def load_splits(
    data_dir: Path,
    val_percent: float = 3.0,
    limit: int | None = None,
    layers: tuple[int, ...] = (),
) -> DistilledSplits:
    """Load the samples (first `limit`) and split them by id into train and validation;
    `layers` names the stored decoder-layer features to load too.

    Each split's arrays are allocated once at their final size and filled shard by shard,
    reading only the tensors asked for, so memory peaks at the result plus one shard's
    tensors (not twice the data set)."""
    records = read_index(data_dir, limit)
    categories = tuple(sorted({str(r["category"]) for r in records}))
    splits = {
        val: [r for r in records if is_validation(str(r["id"]), val_percent) == val]
        for val in (False, True)
    }
    with safe_open(str(data_dir / SHARD_DIR / str(records[0]["shard"])), framework="pt") as first:
        width = int(first.get_slice("hidden").get_shape()[1])
        top_k = int(first.get_slice("topk_ids").get_shape()[1])
    data = {val: _allocate(rs, categories, layers, width, top_k) for val, rs in splits.items()}
    by_shard: dict[str, list[tuple[bool, dict[str, object]]]] = {}
    for val, rs in splits.items():
        for rec in rs:
            by_shard.setdefault(str(rec["shard"]), []).append((val, rec))
    offsets = {val: _offsets(rs) for val, rs in splits.items()}
    keys = ["hidden", "topk_ids", "topk_values", *(f"layer{i}" for i in layers)]
    for name in sorted(by_shard):
        with safe_open(str(data_dir / SHARD_DIR / name), framework="pt") as shard:
            stored = set(shard.keys())
            for i in layers:
                if f"layer{i}" not in stored:
                    raise ValueError(f"the distilled shards hold no features of decoder layer {i}")
            tensors = {k: shard.get_tensor(k) for k in keys}
        for val, rec in by_shard[name]:
            n = _positions(rec)
            if n <= 0:
                continue
            at, off = offsets[val][str(rec["id"])], int(rec["offset"])  # type: ignore[call-overload]
            out = data[val]
            out.hidden[at : at + n] = tensors["hidden"][off : off + n]
            out.topk_ids[at : at + n] = tensors["topk_ids"][off : off + n]
            out.topk_values[at : at + n] = tensors["topk_values"][off : off + n]
            for i in layers:
                out.layers[i][at : at + n] = tensors[f"layer{i}"][off : off + n]
        del tensors
    return DistilledSplits(train=data[False], val=data[True])


def _positions(rec: dict[str, object]) -> int:
    """Stored positions of a record: j in [start, len(prompt) + len(answer) - 1). Records
    without "start" hold answer positions only (j from len(prompt) - 1)."""
    prompt = len(rec["prompt_ids"])  # type: ignore[arg-type]
    start: int = int(rec.get("start", prompt - 1))  # type: ignore[call-overload]
    return prompt + len(rec["answer_ids"]) - 1 - start  # type: ignore[arg-type]


def _offsets(records: list[dict[str, object]]) -> dict[str, int]:
    """Where each record's positions begin in its split's flat arrays (index order)."""
    out, at = {}, 0
    for rec in records:
        out[str(rec["id"])] = at
        at += max(0, _positions(rec))
    return out


def _allocate(
    records: list[dict[str, object]],
    categories: tuple[str, ...],
    layers: tuple[int, ...],
    width: int,
    top_k: int,
) -> PositionData:
    """A split's PositionData at its final size: tokens, depths, categories and answer flags
    filled from the index; features and logits zero until `load_splits` copies them in."""
    token, inputs, left, cat, answer = [], [], [], [], []
    kept = 0
    for rec in records:
        n = _positions(rec)
        if n <= 0:
            continue
        prompt = list(rec["prompt_ids"])  # type: ignore[call-overload]
        seq = prompt + list(rec["answer_ids"])  # type: ignore[call-overload]
        start = len(seq) - 1 - n
        token.append(torch.tensor(seq[start + 1 :], dtype=torch.long))
        inputs.append(torch.tensor(seq[start : start + n], dtype=torch.long))
        left.append(torch.arange(n, 0, -1, dtype=torch.long))
        cat.append(torch.full((n,), categories.index(str(rec["category"])), dtype=torch.long))
        answer.append(torch.arange(start, start + n) >= len(prompt) - 1)
        kept += 1
    total = sum(len(t) for t in token)
    empty = torch.zeros(0, dtype=torch.long)
    return PositionData(
        hidden=torch.zeros(total, width, dtype=torch.float16),
        token=torch.cat(token) if token else empty,
        topk_ids=torch.zeros(total, top_k, dtype=torch.int32),
        topk_values=torch.zeros(total, top_k, dtype=torch.float16),
        depth_left=torch.cat(left) if left else empty,
        category=torch.cat(cat) if cat else empty,
        categories=categories,
        num_samples=kept,
        is_answer=torch.cat(answer) if answer else torch.zeros(0, dtype=torch.bool),
        layers={i: torch.zeros(total, width, dtype=torch.float16) for i in layers},
        input_token=torch.cat(inputs) if inputs else empty,
    )


@dataclass(frozen=True)
class DraftVocab:
    """The draft vocabulary: target ids by descending frequency, and its token coverage."""

    ids: torch.Tensor  # (Vd,) long
    coverage: float


def build_draft_vocab(
    tokens: torch.Tensor, size: int, vocab_size: int, always: tuple[int, ...] = ()
) -> DraftVocab:
    """The `size` most frequent ids of `tokens` (ties by id), `always` ids forced in.

    Unseen ids fill the remainder in id order, so the result always has exactly `size` ids.
    """
    counts = Counter(tokens.tolist())
    ranked = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    chosen = list(dict.fromkeys([*always, *ranked]))[:size]
    if len(chosen) < size:
        seen = set(chosen)
        chosen += [t for t in range(vocab_size) if t not in seen][: size - len(chosen)]
    covered = sum(counts[t] for t in chosen)
    return DraftVocab(torch.tensor(chosen, dtype=torch.long), covered / max(1, len(tokens)))
