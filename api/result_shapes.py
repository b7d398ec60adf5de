"""The OpenAI Batch output line of a result row (results.jsonl).

The paginated JSON shape is `jobs.store.result_view`; this is the OpenAI-compatible one.
Pure functions of a `jobs.models.Result` row; no database access, no Flask.
"""

from __future__ import annotations

from typing import Any

from jobs.models import Result, ResultStatus


def _error(row: Result) -> dict[str, Any] | None:
    if row.status is ResultStatus.SUCCEEDED:
        return None
    if row.error:
        return {
            "code": str(row.error.get("code", "error")),
            "message": str(row.error.get("message", "")),
        }
    if row.status is ResultStatus.CANCELLED:
        return {"code": "cancelled", "message": "the job was cancelled before this request ran"}
    return {"code": "error", "message": "the request failed"}


def batch_output_line(row: Result, model: str) -> dict[str, Any]:
    """One line of results.jsonl in OpenAI Batch output form (chat.completion body)."""
    suffix = f"{row.job_id.removeprefix('job_')}_{row.input_index}"
    response = None
    if row.status is ResultStatus.SUCCEEDED:
        prompt_tokens = row.prompt_tokens or 0
        completion_tokens = row.completion_tokens or 0
        response = {
            "status_code": 200,
            "request_id": f"req_{suffix}",
            "body": {
                "id": f"chatcmpl_{suffix}",
                "object": "chat.completion",
                "created": int(row.created_at.timestamp()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": row.text or ""},
                        "finish_reason": row.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        }
    return {
        "id": f"batch_req_{suffix}",
        "custom_id": row.custom_id,
        "response": response,
        "error": _error(row),
    }
