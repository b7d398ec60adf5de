"""Human-readable text for jobs, results and statistics, and the job progress bar.

Pure formatting for the CLI: functions return strings, `JobProgress` draws a tqdm bar on
stderr from the job objects that `Client.wait` polls. Machine-readable output is `--json`.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from tqdm import tqdm

from s4c.client import Job, Result

REDRAW_SECONDS = 5.0


class JobProgress:
    """A progress bar over a job's finished requests; pass `update` as on_progress."""

    def __init__(self, description: str = "requests") -> None:
        self.bar: tqdm[Any] | None = None
        self.description = description
        self.status = ""

    def update(self, job: Job) -> None:
        """Advance to the job's finished count; redraw on a change or every few seconds."""
        counts = job.request_counts
        if self.bar is None:
            self.bar = tqdm(total=counts.total, desc=self.description, unit="req", file=sys.stderr)
        if job.status != self.status:
            self.status = job.status
            self.bar.set_postfix_str(job.status)
        if counts.finished > self.bar.n:
            self.bar.update(counts.finished - self.bar.n)
        elif time.monotonic() - self.bar.last_print_t > REDRAW_SECONDS:
            self.bar.refresh()  # keep the elapsed time moving while a chunk runs

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def format_job(job: Job) -> str:
    """Status, counts, timestamps' gist and statistics of a job."""
    counts = job.request_counts
    lines = [
        f"job {job.id}: {job.status}",
        f"  model:    {job.model or '-'}",
        f"  requests: {counts.total} total, {counts.completed} completed, "
        f"{counts.failed} failed, {counts.cancelled} cancelled",
    ]
    window = job.raw.get("completion_window")
    if window:
        expires = job.raw.get("expires_at")
        when = "" if expires is None else f", expires {_clock(expires)}"
        lines.append(f"  window:   {window}{when}")
    if job.metadata:
        pairs = ", ".join(f"{key}={value}" for key, value in sorted(job.metadata.items()))
        lines.append(f"  metadata: {pairs}")
    for error in job.errors:
        lines.append(f"  error:    {error.get('code')}: {error.get('message')}")
    stats = format_stats(job.stats)
    if stats:
        lines.append("  statistics:")
        lines.extend("    " + line for line in stats.splitlines())
    return "\n".join(lines)


def _clock(unix: Any) -> str:
    """A unix time as 'YYYY-MM-DD HH:MM:SS UTC'."""
    return datetime.fromtimestamp(int(unix), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _runs(method: Any, runs: Any) -> str:
    """Which method ran the baseline sample how often, as " (s4c, 2 runs)"; "" if unknown."""
    if not runs:
        return ""
    return f" ({method or '?'}, {runs} run{'s' if runs != 1 else ''})"


def _sequence(values: Sequence[Any] | None, digits: int = 2) -> str:
    if not values:
        return "-"
    return "[" + ", ".join(_number(value, digits) for value in values) + "]"


def format_stats(stats: Mapping[str, Any]) -> str:
    """The job statistics object as aligned lines; empty when there is nothing yet."""
    if not stats:
        return ""
    rows = [
        ("method", _number(stats.get("method"))),
        ("tokens generated", _number(stats.get("tokens_generated"))),
        ("generation seconds", _number(stats.get("generation_seconds"))),
        ("tokens per second", _number(stats.get("tokens_per_second"))),
        ("tau (tokens/forward)", _number(stats.get("tau"), 3)),
        ("target forwards", _number(stats.get("target_forwards"))),
        ("acceptance per depth", _sequence(stats.get("acceptance_per_depth"), 3)),
        ("tree sizes", _sequence(stats.get("tree_sizes"))),
        ("batch sizes", _sequence(stats.get("batch_sizes"))),
    ]
    baseline = stats.get("baseline") or {}
    if baseline:
        if baseline.get("measured"):
            rows.append(
                (
                    "baseline tokens/s",
                    _number(baseline.get("tokens_per_second"))
                    + _runs("ar", baseline.get("plain_runs")),
                )
            )
            rows.append(
                (
                    "sample tokens/s",
                    _number(baseline.get("sample_tokens_per_second"))
                    + _runs(stats.get("method"), baseline.get("sample_runs")),
                )
            )
            speedup = baseline.get("speedup")
            rows.append(("measured speedup", f"{speedup:.2f}x" if speedup else "-"))
            rows.append(("baseline sample size", _number(baseline.get("sample_size"))))
        else:
            rows.append(("measured speedup", "not measured"))
        checked = baseline.get("greedy_checked")
        if checked:
            rows.append(
                ("greedy outputs checked", f"{baseline.get('greedy_matched')}/{checked} matched")
            )
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def format_result(result: Result, *, width: int = 100) -> str:
    """One result as a short block: header line, then the text (or error) indented."""
    header = f"[{result.index}] {result.custom_id}: {result.status}"
    if result.status == "succeeded":
        usage = result.usage
        header += (
            f" ({result.finish_reason}, {usage.get('prompt_tokens', '?')} prompt + "
            f"{usage.get('completion_tokens', '?')} completion tokens)"
        )
        body = (result.text or "").strip() or "(empty)"
    else:
        error = result.error or {}
        body = f"{error.get('code', 'error')}: {error.get('message', '')}"
    wrapped = [
        textwrap.fill(paragraph, width=width, initial_indent="    ", subsequent_indent="    ")
        if paragraph.strip()
        else ""
        for paragraph in body.splitlines()
    ]
    return header + "\n" + "\n".join(wrapped)
