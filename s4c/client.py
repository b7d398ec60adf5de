"""A small typed Python client for the s4c REST API (`/v1/jobs`), used by the CLI.

It submits jobs (from a list, an iterator or a JSONL file), reads, lists and cancels them,
iterates results in input order and waits with a progress callback. Errors are typed and
carry the API's problem details; 429/503 answers and connection failures are retried with
exponential backoff. Submissions always send an Idempotency-Key, so a retry never creates a
second job. It knows nothing about the server's internals.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class S4CError(Exception):
    """Base class of every error this client raises."""


class ServiceUnreachableError(S4CError):
    """No answer from the service (connection refused, DNS, timeout) after all retries."""


class ApiError(S4CError):
    """The API answered with an error; `problem` is its RFC 9457 problem details body."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        self.title = str(problem.get("title") or f"HTTP {status}")
        self.detail = str(problem.get("detail") or "")
        super().__init__(f"{self.title} ({status}): {self.detail}" if self.detail else self.title)


class AuthenticationError(ApiError):
    """401/403: missing, wrong or revoked API key."""


class NotFoundError(ApiError):
    """404: no such job for this key's tenant."""


class InvalidRequestError(ApiError):
    """400/409/413/415/422: the request (or job file) was rejected; nothing was written."""


class RateLimitedError(ApiError):
    """429 after all retries."""


class ServiceUnavailableError(ApiError):
    """5xx after all retries."""


def _error_for(status: int, problem: Mapping[str, Any]) -> ApiError:
    if status in (401, 403):
        return AuthenticationError(status, problem)
    if status == 404:
        return NotFoundError(status, problem)
    if status == 429:
        return RateLimitedError(status, problem)
    if status >= 500:
        return ServiceUnavailableError(status, problem)
    if 400 <= status < 500:
        return InvalidRequestError(status, problem)
    return ApiError(status, problem)


@dataclass(frozen=True)
class RequestCounts:
    total: int
    completed: int
    failed: int
    cancelled: int

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.cancelled


@dataclass(frozen=True)
class Job:
    """A job as the API shows it; `raw` keeps the whole JSON object."""

    id: str
    status: str
    model: str | None
    created_at: int | None
    request_counts: RequestCounts
    metadata: Mapping[str, str]
    stats: Mapping[str, Any]
    errors: list[Mapping[str, Any]]
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Job:
        counts = body.get("request_counts") or {}
        return cls(
            id=str(body["id"]),
            status=str(body["status"]),
            model=body.get("model"),
            created_at=body.get("created_at"),
            request_counts=RequestCounts(
                total=int(counts.get("total", 0)),
                completed=int(counts.get("completed", 0)),
                failed=int(counts.get("failed", 0)),
                cancelled=int(counts.get("cancelled", 0)),
            ),
            metadata=dict(body.get("metadata") or {}),
            stats=dict(body.get("stats") or {}),
            errors=list(body.get("errors") or []),
            raw=dict(body),
        )

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class Result:
    """One request's outcome; `text` is None unless status is "succeeded"."""

    custom_id: str
    index: int
    status: str
    text: str | None
    finish_reason: str | None
    usage: Mapping[str, int]
    stats: Mapping[str, Any]
    error: Mapping[str, Any] | None
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Result:
        response = body.get("response") or {}
        return cls(
            custom_id=str(body["custom_id"]),
            index=int(body["index"]),
            status=str(body["status"]),
            text=response.get("text"),
            finish_reason=response.get("finish_reason"),
            usage=dict(response.get("usage") or {}),
            stats=dict(response.get("stats") or {}),
            error=body.get("error"),
            raw=dict(body),
        )


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    has_more: bool
    last_id: str | None


class Client:
    """Talks to one s4c API with one API key. Thread-compatible, not thread-safe."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff_seconds: float = 0.5,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.session = session or requests.Session()

    # -- jobs -----------------------------------------------------------------------------

    def submit(
        self,
        requests_: Iterable[Mapping[str, Any]],
        *,
        defaults: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        model: str | None = None,
        baseline_sample: float | None = None,
        completion_window: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Create a job from native requests ({"custom_id", "prompt"|"messages", params...}).

        `completion_window` ('24h') is how long the job may take before it expires."""
        body: dict[str, Any] = {"requests": list(requests_)}
        if defaults is not None:
            body["defaults"] = dict(defaults)
        if metadata is not None:
            body["metadata"] = dict(metadata)
        if model is not None:
            body["model"] = model
        if baseline_sample is not None:
            body["baseline_sample"] = baseline_sample
        if completion_window is not None:
            body["completion_window"] = completion_window
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return Job.from_json(self._request("POST", "/v1/jobs", json=body, headers=headers))

    def submit_jsonl(
        self,
        source: Path | str | bytes | Iterable[Mapping[str, Any]],
        *,
        metadata: Mapping[str, str] | None = None,
        completion_window: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Create a job from OpenAI Batch input lines: a file path, JSONL bytes or dicts.

        With metadata or a completion window the file goes as a multipart upload (field
        `file`), else as an `application/jsonl` body.
        """
        payload = _jsonl_bytes(source)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        form: dict[str, str] = {}
        if metadata is not None:
            form["metadata"] = json.dumps(dict(metadata))
        if completion_window is not None:
            form["completion_window"] = completion_window
        if not form:
            headers["Content-Type"] = "application/jsonl"
            body = self._request("POST", "/v1/jobs", data=payload, headers=headers)
        else:
            body = self._request(
                "POST",
                "/v1/jobs",
                files={"file": ("batch.jsonl", payload, "application/jsonl")},
                data=form,
                headers=headers,
            )
        return Job.from_json(body)

    def get_job(self, job_id: str) -> Job:
        return Job.from_json(self._request("GET", f"/v1/jobs/{job_id}"))

    def list_jobs(self, *, after: str | None = None, limit: int = 20) -> JobPage:
        """One page of this tenant's jobs, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        body = self._request("GET", "/v1/jobs", params=params)
        return JobPage(
            jobs=[Job.from_json(item) for item in body.get("data", [])],
            has_more=bool(body.get("has_more")),
            last_id=body.get("last_id"),
        )

    def cancel(self, job_id: str) -> Job:
        return Job.from_json(self._request("POST", f"/v1/jobs/{job_id}/cancel"))

    def iter_results(self, job_id: str, *, page_size: int = 100) -> Iterator[Result]:
        """Every result recorded so far, in input order, fetched page by page."""
        after: int | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if after is not None:
                params["after"] = after
            body = self._request("GET", f"/v1/jobs/{job_id}/results", params=params)
            data = body.get("data", [])
            for item in data:
                yield Result.from_json(item)
            if not body.get("has_more") or not data:
                return
            after = int(body.get("last_index", data[-1]["index"]))

    def download_results(self, job_id: str, destination: Path) -> int:
        """Stream results.jsonl (OpenAI Batch output lines) into a file; returns lines written."""
        response = self._send("GET", f"/v1/jobs/{job_id}/results.jsonl", stream=True)
        lines = 0
        with response, destination.open("wb") as out:
            for line in response.iter_lines():
                if line:
                    out.write(line + b"\n")
                    lines += 1
        return lines

    def wait(
        self,
        job_id: str,
        *,
        poll_seconds: float = 1.0,
        timeout: float | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job reaches a terminal status; on_progress sees every poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.is_finished:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout} s")
            time.sleep(poll_seconds)

    # -- service --------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """True when /readyz says the database and broker are reachable."""
        try:
            response = self.session.get(f"{self.base_url}/readyz", timeout=self.timeout)
        except requests.RequestException:
            return False
        return response.status_code == 200

    # -- transport ------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._send(method, path, **kwargs)
        with response:
            try:
                body = response.json()
            except ValueError as exc:
                raise ApiError(
                    response.status_code, {"title": "Response is not JSON", "detail": str(exc)}
                ) from exc
        if not isinstance(body, dict):
            raise ApiError(response.status_code, {"title": "Unexpected response shape"})
        return body

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One HTTP call with retries; returns a 2xx response or raises a typed error."""
        headers = dict(kwargs.pop("headers", None) or {})
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url}{path}"
        attempt = 0
        while True:
            try:
                response = self.session.request(
                    method, url, headers=headers, timeout=self.timeout, **kwargs
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self.max_retries:
                    raise ServiceUnreachableError(
                        f"cannot reach the s4c API at {self.base_url} ({_reason(exc)}); "
                        "is it running? (`s4c serve`, or set S4C_API_URL)"
                    ) from exc
                self._sleep_before_retry(attempt, None)
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                retry_after = response.headers.get("Retry-After")
                response.close()
                self._sleep_before_retry(attempt, retry_after)
                attempt += 1
                continue
            raise _error_for(response.status_code, _problem_of(response))

    def _sleep_before_retry(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff_seconds * (2**attempt)
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                delay = max(delay, float(retry_after))
        time.sleep(min(delay, 30.0))


def _reason(exc: requests.RequestException) -> str:
    text = str(exc)
    for known in ("Connection refused", "Name or service not known", "timed out"):
        if known in text:
            return known.lower()
    return type(exc).__name__


def _problem_of(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"title": response.reason or f"HTTP {response.status_code}",
                "detail": response.text[:500]}  # fmt: skip
    if isinstance(body, dict):
        return body
    return {"title": f"HTTP {response.status_code}", "detail": str(body)[:500]}


def _jsonl_bytes(source: Path | str | bytes | Iterable[Mapping[str, Any]]) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, str | Path):
        return Path(source).read_bytes()
    return b"".join(json.dumps(dict(line)).encode() + b"\n" for line in source)
