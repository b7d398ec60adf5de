"""Benchmark records -> per-method summaries (overall, per category, per batch size) and Markdown.

Torch-free. A record is one answer: one turn of one prompt by one method. Throughput is
generated tokens / wall seconds summed over the answers of a group (every turn asked);
speedups are ratios of those throughputs over the same answers in the same run; tau is
tokens / target forwards (bonus token included, 1.0 for hf); acceptance per depth is the share
of steps with a draft at that depth that accepted it; exact match is the share of answers equal
to hf's answer to the same turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]


@dataclass(frozen=True)
class Summary:
    prompts: int  # distinct prompts
    answers: int  # (prompt, turn) answers: the records aggregated
    new_tokens: int
    seconds: float
    tokens_per_s: float
    mean_prompt_tokens_per_s: float
    speedup_vs_hf: float | None
    speedup_vs_ar: float | None
    tau: float | None
    acceptance_per_depth: tuple[float, ...]
    exact_match: float | None
    peak_rss_mb: float


def _rate(tokens: float, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def summarize(records: Sequence[Record], method: str) -> Summary | None:
    """Summary of `method` over `records` (a group of answers by several methods)."""
    mine = [r for r in records if r["method"] == method]
    if not mine:
        return None

    def throughput(name: str) -> float | None:
        rows = [r for r in records if r["method"] == name]
        if not rows:
            return None
        return _rate(sum(r["new_tokens"] for r in rows), sum(r["seconds"] for r in rows))

    tps = throughput(method) or 0.0
    hf, ar = throughput("hf"), throughput("ar")
    forwards = [r["target_forwards"] for r in mine]
    if method == "hf":
        tau: float | None = 1.0
    elif all(f for f in forwards):
        tau = sum(r["new_tokens"] for r in mine) / sum(forwards)
    else:
        tau = None
    depth = max((len(r["attempted_per_depth"]) for r in mine), default=0)
    acc = []
    for d in range(depth):
        tried = sum(r["attempted_per_depth"][d] for r in mine if d < len(r["attempted_per_depth"]))
        took = sum(r["accepted_per_depth"][d] for r in mine if d < len(r["accepted_per_depth"]))
        acc.append(took / tried if tried else 0.0)
    flags = [r["exact_match_hf"] for r in mine if r.get("exact_match_hf") is not None]
    return Summary(
        prompts=len({r["prompt_id"] for r in mine}),
        answers=len(mine),
        new_tokens=sum(r["new_tokens"] for r in mine),
        seconds=sum(r["seconds"] for r in mine),
        tokens_per_s=tps,
        mean_prompt_tokens_per_s=sum(r["tokens_per_s"] for r in mine) / len(mine),
        speedup_vs_hf=tps / hf if hf else None,
        speedup_vs_ar=tps / ar if ar else None,
        tau=tau,
        acceptance_per_depth=tuple(acc),
        exact_match=sum(flags) / len(flags) if flags else None,
        peak_rss_mb=max(r["peak_rss_mb"] for r in mine),
    )


def summarize_methods(records: Sequence[Record], methods: Sequence[str]) -> dict[str, Any]:
    """{method: {"overall": Summary, "categories": {cat: Summary}}} as plain dicts."""
    cats = list(dict.fromkeys(r["category"] for r in records))
    out: dict[str, Any] = {}
    for m in methods:
        overall = summarize(records, m)
        if overall is None:
            continue
        out[m] = {
            "overall": overall.__dict__,
            "categories": {
                c: s.__dict__
                for c in cats
                if (s := summarize([r for r in records if r["category"] == c], m)) is not None
            },
        }
    return out


def summarize_turns(records: Sequence[Record], asked: int) -> dict[str, Any]:
    """How many turns were run: the `--turns` asked and the answers per turn (each method
    answers the same turns, so these count one method's records)."""
    first = records[0]["method"] if records else None
    per_turn: dict[str, int] = {}
    for r in records:
        if r["method"] == first:
            per_turn[str(r["turn"])] = per_turn.get(str(r["turn"]), 0) + 1
    return {"asked": asked, "answers_per_turn": per_turn}


def summarize_batches(
    batch_records: Sequence[Record], reference: dict[tuple[str, int], tuple[int, ...]]
) -> dict[str, Any]:
    """Issue 5's `batches` section: per batch size and method, throughput, latency, tree size
    and exact match against the batch-1 reference outputs (`reference[(prompt_id, turn)]`)."""
    out: dict[str, Any] = {}
    for size in sorted({r["batch_size"] for r in batch_records}):
        at = [r for r in batch_records if r["batch_size"] == size]
        entry: dict[str, Any] = {}
        hf_rows = [r for r in at if r["method"] == "hf"]
        hf_tps = _rate(sum(r["new_tokens"] for r in hf_rows), _batch_seconds(hf_rows))
        for m in dict.fromkeys(r["method"] for r in at):
            rows = [r for r in at if r["method"] == m]
            seconds = _batch_seconds(rows)
            tps = _rate(sum(r["new_tokens"] for r in rows), seconds)
            same = [
                tuple(r["tokens"]) == reference[key]
                for r in rows
                if (key := (r["prompt_id"], r["turn"])) in reference
            ]
            nodes = [r["tree_nodes"] for r in rows if r.get("tree_nodes") is not None]
            entry[m] = {
                "tokens_per_s": tps,
                "speedup_vs_hf": tps / hf_tps if hf_rows and hf_tps else None,
                "row_latency_s": sum(r["seconds"] for r in rows) / len(rows),
                "tree_nodes": max(nodes) if nodes else None,
                "exact_match": sum(same) / len(same) if same else None,
                "rows": len(rows),
            }
        out[str(size)] = entry
    return out


def _batch_seconds(rows: Sequence[Record]) -> float:
    """Wall time of the batches behind `rows` (rows of one batch share its time)."""
    seen: dict[int, float] = {}
    for r in rows:
        seen[r["batch_index"]] = r["seconds"]
    return sum(seen.values())


def _fmt(x: float | None, pattern: str = "{:.2f}") -> str:
    return "–" if x is None else pattern.format(x)


def turns_line(turns: dict[str, Any]) -> str:
    """'Turns asked: 2; 35 answers to 30 prompts (turn 1: 30, turn 2: 5).'"""
    per_turn = turns["answers_per_turn"]
    counts = ", ".join(f"turn {t}: {n}" for t, n in per_turn.items())
    prompts = per_turn.get("1", 0)
    return (
        f"Turns asked: {turns['asked']}; {sum(per_turn.values())} answers to {prompts} prompts "
        f"({counts})."
    )


def markdown(report: dict[str, Any]) -> str:
    """How many turns ran, the overall table, a per-category speedup table and the batch table."""
    methods = report["methods"]
    lines = [turns_line(report["turns"]), ""] if "turns" in report else []
    lines += [
        "| method | tok/s | speedup vs hf | speedup vs ar | τ | acceptance per depth "
        "| exact match | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for m, s in methods.items():
        o = s["overall"]
        acc = " ".join(f"{a:.2f}" for a in o["acceptance_per_depth"]) or "–"
        lines.append(
            f"| {m} | {o['tokens_per_s']:.1f} | {_fmt(o['speedup_vs_hf'], '{:.2f}x')} | "
            f"{_fmt(o['speedup_vs_ar'], '{:.2f}x')} | {_fmt(o['tau'])} | {acc} | "
            f"{_fmt(o['exact_match'])} | {o['peak_rss_mb']:.0f} |"
        )
    cats = list(dict.fromkeys(c for s in methods.values() for c in s["categories"]))
    if cats:
        lines += [
            "",
            "Speedup vs hf (τ) per category:",
            "",
            "| method | " + " | ".join(cats) + " |",
            "|---|" + "---:|" * len(cats),
        ]
        for m, s in methods.items():
            cells = []
            for c in cats:
                x = s["categories"].get(c)
                cells.append(
                    "–"
                    if x is None
                    else f"{_fmt(x['speedup_vs_hf'], '{:.2f}x')} ({_fmt(x['tau'])})"
                )
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    batches = report.get("batches") or {}
    if batches:
        lines += [
            "",
            "| batch | method | tok/s | speedup vs hf | row latency s | tree nodes "
            "| exact match vs batch 1 |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for size, entry in batches.items():
            for m, x in entry.items():
                lines.append(
                    f"| {size} | {m} | {x['tokens_per_s']:.1f} | {_fmt(x['speedup_vs_hf'], '{:.2f}x')} | "
                    f"{x['row_latency_s']:.2f} | {_fmt(x['tree_nodes'], '{}')} | "
                    f"{_fmt(x['exact_match'])} |"
                )
    return "\n".join(lines) + "\n"
