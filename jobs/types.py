"""Plain values passed into and out of the job store (no SQLAlchemy here).

`NewJob`/`NewRequest` are what the API hands `store.create_job` after validation;
`Claim`, `RequestOutcome`, `BaselineRun` and `ChunkOutcome` are what the worker exchanges
with the store. All frozen dataclasses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from jobs.models import ResultStatus
from s4c_engine.config import FinishReason, Prompt, RequestStats, SamplingParams


@dataclass(frozen=True)
class NewRequest:
    """One validated request; `index` is its 0-based position in the submitted job."""

    custom_id: str
    prompt: Prompt
    params: SamplingParams
    index: int


@dataclass(frozen=True)
class NewJob:
    """A validated job. `model=None` means the deployment's default model; `baseline_sample`
    is the fraction of requests re-run with plain decoding (None: the deployment default,
    0: no baseline); `completion_window` ('24h', see `jobs.windows`) is how long the job
    may take before it expires (None: the deployment default, which may be no limit)."""

    requests: Sequence[NewRequest]
    metadata: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None
    baseline_sample: float | None = None
    idempotency_key: str | None = None
    completion_window: str | None = None


@dataclass(frozen=True)
class Claim:
    """A chunk leased to `owner` until `lease_expires_at`; `attempt` counts from 1."""

    chunk_id: int
    job_id: str
    owner: str
    attempt: int
    start_index: int
    end_index: int
    measure_baseline: bool
    lease_expires_at: datetime


@dataclass(frozen=True)
class RequestOutcome:
    """How one request ended. Succeeded rows carry text and stats; failed ones an error."""

    index: int
    custom_id: str
    status: ResultStatus
    text: str | None = None
    finish_reason: FinishReason | None = None
    stats: RequestStats | None = None
    error_code: str | None = None
    error_message: str | None = None

    @classmethod
    def failure(cls, index: int, custom_id: str, code: str, message: str) -> RequestOutcome:
        return cls(index, custom_id, ResultStatus.FAILED, error_code=code, error_message=message)

    @classmethod
    def cancelled(cls, index: int, custom_id: str) -> RequestOutcome:
        return cls(
            index,
            custom_id,
            ResultStatus.CANCELLED,
            error_code="cancelled",
            error_message="the job was cancelled before this request finished",
        )

    @classmethod
    def expired(cls, index: int, custom_id: str) -> RequestOutcome:
        """A request the job's completion window ended before (OpenAI Batch's code)."""
        return cls(
            index,
            custom_id,
            ResultStatus.CANCELLED,
            error_code="batch_expired",
            error_message="the job's completion window ended before this request finished",
        )


@dataclass(frozen=True)
class BaselineRun:
    """A bracketed comparison on the same requests, device and batch size.

    The job's method ran the sample, then plain decoding (`ar`), then the job's method again
    (A-B-A), so a machine that speeds up or slows down during the measurement moves both sides
    alike. `tokens`/`seconds`: the `plain_runs` plain runs; `sample_tokens`/`sample_seconds`:
    the job's method summed over its `sample_runs` runs. A greedy request is matched when every
    run of the job's method equals the plain output token for token.
    """

    sample_size: int
    tokens: int
    seconds: float
    sample_tokens: int
    sample_seconds: float
    greedy_checked: int
    greedy_matched: int
    plain_runs: int
    sample_runs: int


@dataclass(frozen=True)
class ChunkOutcome:
    """What one run over (part of) a chunk produced, recorded in one transaction."""

    results: Sequence[RequestOutcome]
    generation_seconds: float = 0.0
    method: str | None = None
    baseline: BaselineRun | None = None
