"""Benchmark prompts: Spec-Bench's `question.jsonl` and plain JSONL, and the per-category pick.

Torch-free. Spec-Bench rows are `{"question_id", "category", "turns"}`; plain rows are
`{"id", "category", "prompt"}`. The MT-bench sub-categories (writing, roleplay, ...) are
grouped as `mt_bench`, as Spec-Bench reports them; the sub-category stays on the prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MT_BENCH_SUBCATEGORIES = frozenset(
    {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
)


@dataclass(frozen=True)
class BenchPrompt:
    id: str
    category: str  # reporting group, e.g. "mt_bench", "qa"
    subcategory: str  # the row's own category
    turns: tuple[str, ...]


def parse_row(row: dict[str, object], line_no: int) -> BenchPrompt:
    """One JSONL row in either format; ValueError names the line when neither fits."""
    if "turns" in row and "question_id" in row:
        sub = str(row.get("category", "default"))
        group = "mt_bench" if sub in MT_BENCH_SUBCATEGORIES else sub
        turns = row["turns"]
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"line {line_no}: 'turns' must be a non-empty list")
        return BenchPrompt(str(row["question_id"]), group, sub, tuple(str(t) for t in turns))
    if "prompt" in row:
        cat = str(row.get("category", "default"))
        return BenchPrompt(str(row.get("id", line_no)), cat, cat, (str(row["prompt"]),))
    raise ValueError(
        f"line {line_no}: expected Spec-Bench (question_id, category, turns) "
        "or plain (id, category, prompt) fields"
    )


def read_bench_prompts(path: Path) -> list[BenchPrompt]:
    """Every prompt of a JSONL file, in file order."""
    prompts = []
    with Path(path).open(encoding="utf-8") as fh:
        for no, line in enumerate(fh, 1):
            if line.strip():
                prompts.append(parse_row(json.loads(line), no))
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def first_per_category(prompts: list[BenchPrompt], n: int | None) -> list[BenchPrompt]:
    """The first `n` prompts of each category, in file order (all of them when n is None)."""
    if n is None:
        return list(prompts)
    seen: dict[str, int] = {}
    picked = []
    for p in prompts:
        if seen.get(p.category, 0) < n:
            seen[p.category] = seen.get(p.category, 0) + 1
            picked.append(p)
    return picked


def default_prompts_path(repo_root: Path) -> Path:
    """Spec-Bench's questions in the shared data beside the repository (CI has it there too)."""
    return repo_root.parent / "shared" / "data" / "spec_bench" / "question.jsonl"
