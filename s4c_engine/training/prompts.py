"""Training prompts: read `shared/data/train/*.jsonl` and draw a category-balanced mix.

Torch-free. Never reads Spec-Bench: evaluation prompts must stay unseen by the heads.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainPrompt:
    id: str
    category: str
    prompt: str


def read_train_prompts(train_dir: Path) -> list[TrainPrompt]:
    """Every row of `train_dir/*.jsonl` (schema: id, category, prompt), files in name order."""
    rows: list[TrainPrompt] = []
    for path in sorted(train_dir.glob("*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    obj = json.loads(line)
                    rows.append(TrainPrompt(obj["id"], obj["category"], obj["prompt"]))
    if not rows:
        raise FileNotFoundError(f"no training prompts under {train_dir}")
    return rows


def balanced_mix(rows: list[TrainPrompt], per_category: int, seed: int) -> list[TrainPrompt]:
    """At most `per_category` rows of each category, interleaved in a seeded random order.

    The order is shuffled across categories so that any prefix of the mix (what a run that
    was stopped early has generated) is balanced too.
    """
    by_cat: dict[str, list[TrainPrompt]] = {}
    for row in rows:
        by_cat.setdefault(row.category, []).append(row)
    rng = random.Random(seed)
    mix: list[TrainPrompt] = []
    for cat in sorted(by_cat):
        group = by_cat[cat]
        mix.extend(rng.sample(group, min(len(group), per_category)))
    rng.shuffle(mix)
    return mix
