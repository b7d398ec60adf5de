"""JSON views of jobs and results: exactly the objects of the REST contract.

Pure functions of model rows; `jobs.store` re-exports `job_view` and `result_view`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jobs.models import Job, Result, ResultStatus
from jobs.stats import stats_view


def _unix(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def job_view(job: Job) -> dict[str, Any]:
    """The job object of the REST contract."""
    return {
        "id": job.id,
        "object": "job",
        "status": job.status.value,
        "model": job.model,
        "completion_window": job.completion_window,
        "created_at": _unix(job.created_at),
        "in_progress_at": _unix(job.in_progress_at),
        "finalizing_at": _unix(job.finalizing_at),
        "completed_at": _unix(job.completed_at),
        "failed_at": _unix(job.failed_at),
        "expired_at": _unix(job.expired_at),
        "cancelling_at": _unix(job.cancelling_at),
        "cancelled_at": _unix(job.cancelled_at),
        "expires_at": _unix(job.expires_at),
        "request_counts": {
            "total": job.total_count,
            "completed": job.completed_count,
            "failed": job.failed_count,
            "cancelled": job.cancelled_count,
        },
        "metadata": dict(job.metadata_),
        "stats": stats_view(job.stats),
        "errors": list(job.errors),
    }


def result_view(result: Result) -> dict[str, Any]:
    """One result of the REST contract (`response` for successes, `error` otherwise)."""
    response = None
    if result.status == ResultStatus.SUCCEEDED:
        response = {
            "text": result.text,
            "finish_reason": result.finish_reason,
            "usage": {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
            },
            "stats": result.stats,
        }
    return {
        "custom_id": result.custom_id,
        "index": result.input_index,
        "status": result.status.value,
        "response": response,
        "error": result.error,
    }
