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
from safetensors.torch import load_file

from s4c_engine.training.distill import INDEX_FILE, SHARD_DIR


@dataclass(frozen=True)
class PositionData:
    """Flat per-position arrays of one split; N positions, D hidden, k stored logits.

    hidden (N, D) fp16; token (N,) long; topk_ids (N, k) long; topk_values (N, k) fp16;
    depth_left (N,) long = positions left in this sample including this one;
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

    @property
    def num_positions(self) -> int:
        return int(self.token.shape[0])


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
    `layers` names the stored decoder-layer features to load too."""
    records = read_index(data_dir, limit)
    categories = tuple(sorted({str(r["category"]) for r in records}))
    shards: dict[str, dict[str, torch.Tensor]] = {}
    parts: dict[bool, list[tuple[dict[str, object], dict[str, torch.Tensor]]]] = {
        False: [],
        True: [],
    }
    for rec in records:
        name = str(rec["shard"])
        if name not in shards:
            shards[name] = load_file(str(data_dir / SHARD_DIR / name))
        parts[is_validation(str(rec["id"]), val_percent)].append((rec, shards[name]))
    return DistilledSplits(
        train=_flatten(parts[False], categories, layers),
        val=_flatten(parts[True], categories, layers),
    )


def _flatten(
    items: list[tuple[dict[str, object], dict[str, torch.Tensor]]],
    categories: tuple[str, ...],
    layers: tuple[int, ...] = (),
) -> PositionData:
    hidden, token, ids, values, left, cat, answer = [], [], [], [], [], [], []
    feats: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    for rec, shard in items:
        prompt = list(rec["prompt_ids"])  # type: ignore[call-overload]
        seq = prompt + list(rec["answer_ids"])  # type: ignore[call-overload]
        # Records without "start" hold answer positions only (j from len(prompt) - 1).
        start = int(rec.get("start", len(prompt) - 1))  # type: ignore[attr-defined]
        n, off = len(seq) - 1 - start, int(rec["offset"])  # type: ignore[call-overload]
        if n <= 0:
            continue
        hidden.append(shard["hidden"][off : off + n])
        ids.append(shard["topk_ids"][off : off + n].long())
        values.append(shard["topk_values"][off : off + n])
        for i in layers:
            if f"layer{i}" not in shard:
                raise ValueError(f"the distilled shards hold no features of decoder layer {i}")
            feats[i].append(shard[f"layer{i}"][off : off + n])
        token.append(torch.tensor(seq[start + 1 :], dtype=torch.long))
        left.append(torch.arange(n, 0, -1, dtype=torch.long))
        cat.append(torch.full((n,), categories.index(str(rec["category"])), dtype=torch.long))
        answer.append(torch.arange(start, start + n) >= len(prompt) - 1)
    if not hidden:  # e.g. val_percent 0: an empty split evaluates to nothing
        empty = torch.zeros(0, dtype=torch.long)
        return PositionData(
            torch.zeros(0, 0),
            empty,
            torch.zeros(0, 0, dtype=torch.long),
            torch.zeros(0, 0),
            empty,
            empty,
            categories,
            0,
            torch.zeros(0, dtype=torch.bool),
            {i: torch.zeros(0, 0) for i in layers},
        )
    return PositionData(
        hidden=torch.cat(hidden),
        token=torch.cat(token),
        topk_ids=torch.cat(ids),
        topk_values=torch.cat(values),
        depth_left=torch.cat(left),
        category=torch.cat(cat),
        categories=categories,
        num_samples=len(items),
        is_answer=torch.cat(answer),
        layers={i: torch.cat(v) for i, v in feats.items()},
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
