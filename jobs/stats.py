"""Per-job statistics: folding recorded requests into `JobStats`, and its JSON view.

Pure functions over model objects; the caller holds the job row lock (see
`chunks.record_chunk_results`) so concurrent chunks never lose an update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from jobs.models import JobStats
from jobs.types import BaselineRun, RequestOutcome
from s4c_engine.config import RequestStats


def request_stats_json(stats: RequestStats) -> dict[str, Any]:
    """The per-request stats stored with a result: the engine's fields plus tau."""
    data = asdict(stats)
    data["tau"] = stats.tau
    return data


def _add_lists(total: Sequence[int], extra: Sequence[int]) -> list[int]:
    size = max(len(total), len(extra))
    return [
        (total[i] if i < len(total) else 0) + (extra[i] if i < len(extra) else 0)
        for i in range(size)
    ]


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def fold_outcomes(
    stats: JobStats,
    outcomes: Sequence[RequestOutcome],
    *,
    generation_seconds: float,
    method: str | None,
    baseline: BaselineRun | None,
) -> None:
    """Add newly recorded outcomes (and the chunk's wall time and baseline) into `stats`."""
    measured = [o.stats for o in outcomes if o.stats is not None]
    if method is not None:
        stats.method = method
    if measured or generation_seconds > 0:
        stats.tokens_generated = (stats.tokens_generated or 0) + sum(
            s.completion_tokens for s in measured
        )
        stats.target_forwards = (stats.target_forwards or 0) + sum(
            s.target_forwards for s in measured
        )
        stats.generation_seconds = (stats.generation_seconds or 0.0) + generation_seconds
        stats.tokens_per_second = _ratio(stats.tokens_generated, stats.generation_seconds)
        stats.tau = _ratio(stats.tokens_generated, stats.target_forwards)
    if measured:
        acceptance = stats.acceptance or {"accepted": [], "attempted": []}
        accepted, attempted = acceptance["accepted"], acceptance["attempted"]
        for s in measured:
            accepted = _add_lists(accepted, s.accepted_per_depth)
            attempted = _add_lists(attempted, s.attempted_per_depth)
        stats.acceptance = {"accepted": accepted, "attempted": attempted}
        trees = {s.tree_nodes for s in measured if s.tree_nodes > 0}
        batches = {s.batch_size for s in measured if s.batch_size > 0}
        stats.tree_sizes = sorted(set(stats.tree_sizes or []) | trees)
        stats.batch_sizes = sorted(set(stats.batch_sizes or []) | batches)
    if baseline is not None:
        _fold_baseline(stats, baseline)


# The raw sums kept in `JobStats.baseline`, one per `BaselineRun` field.
BASELINE_KEYS = (
    "sample_size",
    "tokens",
    "seconds",
    "sample_tokens",
    "sample_seconds",
    "greedy_checked",
    "greedy_matched",
    "plain_runs",
    "sample_runs",
)


def _fold_baseline(stats: JobStats, run: BaselineRun) -> None:
    keys = BASELINE_KEYS
    total = dict.fromkeys(keys, 0.0) | dict(stats.baseline or {})
    for key in keys:
        total[key] = total[key] + getattr(run, key)
    stats.baseline = total
    stats.baseline_sample_size = int(total["sample_size"])
    stats.baseline_tokens_per_second = _ratio(total["tokens"], total["seconds"])
    sample_tps = _ratio(total["sample_tokens"], total["sample_seconds"])
    if sample_tps is not None and stats.baseline_tokens_per_second:
        stats.speedup = sample_tps / stats.baseline_tokens_per_second


def stats_view(stats: JobStats) -> dict[str, Any]:
    """The job's `stats` object of the REST contract (fields None until known)."""
    acceptance = stats.acceptance or {"accepted": [], "attempted": []}
    per_depth = [
        accepted / attempted if attempted else 0.0
        for accepted, attempted in zip(acceptance["accepted"], acceptance["attempted"])
    ]
    raw = stats.baseline or {}
    measured = stats.baseline_tokens_per_second is not None
    return {
        "method": stats.method,
        "tokens_generated": stats.tokens_generated,
        "generation_seconds": stats.generation_seconds,
        "tokens_per_second": stats.tokens_per_second,
        "tau": stats.tau,
        "target_forwards": stats.target_forwards,
        "acceptance_per_depth": per_depth,
        "tree_sizes": list(stats.tree_sizes or []),
        "batch_sizes": list(stats.batch_sizes or []),
        "baseline": {
            "measured": measured,
            "method": "ar" if measured else None,
            "sample_size": stats.baseline_sample_size,
            "tokens_per_second": stats.baseline_tokens_per_second,
            "sample_tokens_per_second": _ratio(
                raw.get("sample_tokens", 0.0), raw.get("sample_seconds", 0.0)
            )
            if measured
            else None,
            "speedup": stats.speedup,
            "plain_runs": _count(raw, "plain_runs") if measured else None,
            "sample_runs": _count(raw, "sample_runs") if measured else None,
            "greedy_checked": int(raw["greedy_checked"]) if measured else None,
            "greedy_matched": int(raw["greedy_matched"]) if measured else None,
        },
    }


def _count(raw: dict[str, float], key: str) -> int | None:
    # Jobs measured before run counts were kept have none: unknown, not zero.
    return int(raw[key]) if key in raw else None
