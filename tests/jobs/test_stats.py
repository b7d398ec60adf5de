"""`jobs.stats` on plain model objects: folding baselines and the JSON view."""

from __future__ import annotations

from jobs.models import JobStats
from jobs.stats import fold_outcomes, stats_view
from jobs.types import BaselineRun


def test_bracketed_baselines_fold_into_pooled_rates_and_run_counts() -> None:
    stats = JobStats(job_id="job_x")
    for seconds in (2.0, 6.0):  # the machine got slower between the two chunks
        run = BaselineRun(
            sample_size=4, tokens=12, seconds=seconds, sample_tokens=24,
            sample_seconds=seconds, greedy_checked=4, greedy_matched=4,
            plain_runs=1, sample_runs=2,
        )  # fmt: skip
        fold_outcomes(stats, [], generation_seconds=0.0, method="s4c", baseline=run)
    baseline = stats_view(stats)["baseline"]
    assert baseline["tokens_per_second"] == 24 / 8.0
    assert baseline["sample_tokens_per_second"] == 48 / 8.0
    assert baseline["speedup"] == 2.0
    assert (baseline["sample_size"], baseline["plain_runs"], baseline["sample_runs"]) == (8, 2, 4)
    assert (baseline["greedy_checked"], baseline["greedy_matched"]) == (8, 8)


def test_a_baseline_stored_before_runs_were_counted_shows_unknown_run_counts() -> None:
    raw = {
        "sample_size": 2, "tokens": 8, "seconds": 2.0, "sample_tokens": 8,
        "sample_seconds": 1.0, "greedy_checked": 2, "greedy_matched": 2,
    }  # fmt: skip
    stats = JobStats(
        job_id="job_y", baseline=raw, baseline_sample_size=2, baseline_tokens_per_second=4.0,
        speedup=2.0,
    )  # fmt: skip
    baseline = stats_view(stats)["baseline"]
    assert baseline["measured"] and baseline["speedup"] == 2.0
    assert baseline["plain_runs"] is None and baseline["sample_runs"] is None


def test_an_unmeasured_baseline_says_nothing_about_runs() -> None:
    baseline = stats_view(JobStats(job_id="job_z"))["baseline"]
    assert baseline["measured"] is False
    assert baseline["plain_runs"] is None and baseline["sample_runs"] is None
