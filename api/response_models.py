"""Pydantic models of what the API answers, for the OpenAPI document and contract tests.

Views build plain dicts (`jobs.store.job_view`, `api.result_shapes`); these models describe
those dicts exactly (extra fields forbidden) so a drift between code and document shows up in
tests and in schema-driven fuzzing.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

JobStatusName = Literal[
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
]


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestCounts(Shape):
    total: int
    completed: int
    failed: int
    cancelled: int


class ErrorDetail(Shape):
    code: str
    message: str


class Baseline(Shape):
    measured: bool
    method: str | None
    sample_size: int | None
    tokens_per_second: float | None
    sample_tokens_per_second: float | None
    speedup: float | None
    plain_runs: int | None
    sample_runs: int | None
    greedy_checked: int | None
    greedy_matched: int | None


class JobStatistics(Shape):
    method: str | None
    tokens_generated: int | None
    generation_seconds: float | None
    tokens_per_second: float | None
    tau: float | None
    target_forwards: int | None
    acceptance_per_depth: list[float] | None
    tree_sizes: list[int] | None
    batch_sizes: list[int] | None
    baseline: Baseline | None


class Job(Shape):
    id: str
    object: Literal["job"]
    status: JobStatusName
    model: str
    completion_window: str | None
    created_at: int
    in_progress_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    expires_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str]
    stats: JobStatistics
    errors: list[ErrorDetail]


class JobList(Shape):
    object: Literal["list"]
    data: list[Job]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Usage(Shape):
    prompt_tokens: int | None
    completion_tokens: int | None


class ResultResponse(Shape):
    text: str | None
    finish_reason: str | None
    usage: Usage
    stats: dict[str, object] | None


class Result(Shape):
    custom_id: str
    index: int
    status: Literal["succeeded", "failed", "cancelled"]
    response: ResultResponse | None
    error: ErrorDetail | None


class ResultList(Shape):
    object: Literal["list"]
    data: list[Result]
    has_more: bool
    last_index: int | None


class ProblemItem(Shape):
    message: str
    line: int | None = None
    custom_id: str | None = None
    field: str | None = None


class Problem(Shape):
    """RFC 9457 problem details (`application/problem+json`)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    errors: list[ProblemItem] | None = None


class Health(Shape):
    status: Literal["ok"]


class Readiness(Shape):
    status: Literal["ready"]
    checks: dict[str, Literal["ok"]]
