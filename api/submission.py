"""Turning a validated submission into the store's typed values (`NewJob` of `NewRequest`s).

Three sources feed it: an inline `JobIn`, JSONL lines (OpenAI Batch format) from a raw body or
a multipart file. All checks that need the whole job (duplicate custom_ids, prompt length
against the model's context, request count) happen here, before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from api.jsonl import JsonlLine
from api.problems import MAX_REPORTED_ERRORS, ApiProblem, ErrorItem
from api.schemas import (
    BatchLine,
    InputLimits,
    JobIn,
    RequestIn,
    SamplingFields,
    UploadOptions,
    validation_context,
)
from jobs.types import NewJob, NewRequest
from s4c_engine.config import ChatMessage, Prompt, SamplingParams


class TokenCounter(Protocol):
    def count_tokens(self, prompt: Prompt) -> int: ...


@dataclass(frozen=True)
class SubmissionRules:
    """Everything validation needs from the deployment and the served model."""

    limits: InputLimits
    model_name: str
    max_context: int


@dataclass(frozen=True)
class JobOptions:
    """Job-level values given beside the requests."""

    defaults: SamplingFields | None = None
    metadata: dict[str, str] | None = None
    model: str | None = None
    baseline_sample: float | None = None
    idempotency_key: str | None = None
    completion_window: str | None = None


def field_path(loc: Iterable[int | str]) -> str:
    """('requests', 3, 'max_tokens') -> 'requests[3].max_tokens'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def errors_from_validation(
    exc: ValidationError, *, line: int | None = None, custom_id: str | None = None
) -> list[ErrorItem]:
    """One ErrorItem per pydantic error, naming the field (and line and custom_id, for JSONL)."""
    items = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown field '{loc[-1]}'"
        path = field_path(loc)
        where = f"line {line}: " if line is not None else ""
        subject = path or ("the line" if line is not None else "the body")
        items.append(
            ErrorItem(
                f"{where}{subject}: {message}", line=line, custom_id=custom_id, field=path or None
            )
        )
    return items


def _custom_id_of(value: Any) -> str | None:
    found = value.get("custom_id") if isinstance(value, dict) else None
    return found if isinstance(found, str) and 0 < len(found) <= 64 else None


def validation_problem(errors: list[ErrorItem], what: str = "the job") -> ApiProblem:
    first = errors[0].message
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ApiProblem(422, "validation-error", f"{what} is invalid: {first}{more}", errors)


def sampling_params(own: SamplingFields, defaults: SamplingFields | None) -> SamplingParams:
    """Request fields win over job defaults; unset fields take SamplingParams' defaults."""
    chosen: dict[str, Any] = {}
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop"):
        value = getattr(own, name)
        if value is None and defaults is not None:
            value = getattr(defaults, name)
        if value is not None:
            chosen[name] = tuple(value) if name == "stop" else value
    return SamplingParams(**chosen)


def _check_model(model: str | None, rules: SubmissionRules, field: str, line: int | None) -> None:
    if model is not None and model != rules.model_name:
        where = f"line {line}: " if line is not None else ""
        message = (
            f"{where}{field}: model '{model}' is not served here (serving '{rules.model_name}')"
        )
        raise ApiProblem(
            422, "unknown-model", message, [ErrorItem(message, line=line, field=field)]
        )


def _new_request(item: RequestIn, index: int, defaults: SamplingFields | None) -> NewRequest:
    if item.messages is not None:
        prompt = Prompt(messages=tuple(ChatMessage(m.role, m.content) for m in item.messages))
    else:
        prompt = Prompt(text=item.prompt)
    return NewRequest(item.custom_id, prompt, sampling_params(item, defaults), index)


def _line_request(line: BatchLine, index: int, defaults: SamplingFields | None) -> NewRequest:
    body = line.body
    if body.messages is not None:
        prompt = Prompt(messages=tuple(ChatMessage(m.role, m.text) for m in body.messages))
    else:
        prompt = Prompt(text=body.prompt)
    own = SamplingFields(
        max_tokens=body.effective_max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stop_strings,
    )
    return NewRequest(line.custom_id, prompt, sampling_params(own, defaults), index)


def check_prompt_lengths(
    requests: list[NewRequest],
    counter: TokenCounter,
    max_context: int,
    lines: list[int] | None = None,
) -> None:
    """422 naming each request whose prompt tokens + max_tokens exceed the model's context."""
    errors: list[ErrorItem] = []
    for position, request in enumerate(requests):
        prompt_tokens = counter.count_tokens(request.prompt)
        total = prompt_tokens + request.params.max_tokens
        problem = None
        if prompt_tokens == 0:
            problem = "the prompt encodes to no tokens"
        elif total > max_context:
            problem = (
                f"prompt ({prompt_tokens} tokens) + max_tokens ({request.params.max_tokens}) = "
                f"{total} exceeds the model's context of {max_context} tokens"
            )
        if problem is not None:
            line = lines[position] if lines is not None else None
            where = f"line {line}: " if line is not None else ""
            errors.append(
                ErrorItem(
                    f"{where}custom_id '{request.custom_id}': {problem}",
                    line=line,
                    custom_id=request.custom_id,
                )
            )
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
    if errors:
        raise ApiProblem(
            422,
            "prompt-too-long",
            f"{len(errors)} request(s) do not fit the model's context: {errors[0].message}",
            errors,
        )


def job_from_inline(
    raw: Any, rules: SubmissionRules, counter: TokenCounter, idempotency_key: str | None
) -> NewJob:
    """Validate an inline JSON job body fully and return the store's NewJob (or raise 4xx)."""
    try:
        job_in = JobIn.model_validate(raw, context=validation_context(rules.limits))
    except ValidationError as exc:
        raise validation_problem(errors_from_validation(exc)) from exc
    _check_model(job_in.model, rules, "model", None)
    first_seen: dict[str, int] = {}
    errors: list[ErrorItem] = []
    for position, item in enumerate(job_in.requests):
        earlier = first_seen.setdefault(item.custom_id, position)
        if earlier != position:
            path = f"requests[{position}].custom_id"
            errors.append(
                ErrorItem(
                    f"{path}: duplicate custom_id '{item.custom_id}' "
                    f"(first seen at requests[{earlier}])",
                    custom_id=item.custom_id,
                    field=path,
                )
            )
    if errors:
        raise validation_problem(errors)
    requests = [_new_request(item, i, job_in.defaults) for i, item in enumerate(job_in.requests)]
    check_prompt_lengths(requests, counter, rules.max_context)
    return NewJob(
        requests=requests,
        metadata=dict(job_in.metadata or {}),
        model=rules.model_name,
        baseline_sample=job_in.baseline_sample,
        idempotency_key=idempotency_key,
        completion_window=job_in.completion_window,
    )


def job_from_jsonl(
    lines: Iterable[JsonlLine],
    options: JobOptions,
    rules: SubmissionRules,
    counter: TokenCounter,
) -> NewJob:
    """Validate OpenAI Batch lines one at a time and return the store's NewJob (or raise 4xx).

    Only the validated requests are kept; structural errors are collected (up to
    MAX_REPORTED_ERRORS) before any prompt is tokenised.
    """
    context = validation_context(rules.limits)
    _check_model(options.model, rules, "model", None)
    requests: list[NewRequest] = []
    line_numbers: list[int] = []
    first_seen: dict[str, int] = {}
    errors: list[ErrorItem] = []
    for line in lines:
        if len(requests) >= rules.limits.max_requests:
            message = (
                f"line {line.number}: a job holds at most {rules.limits.max_requests} requests "
                "(S4C_MAX_REQUESTS_PER_JOB)"
            )
            raise ApiProblem(
                422, "too-many-requests-in-job", message, [ErrorItem(message, line=line.number)]
            )
        try:
            parsed = BatchLine.model_validate(line.value, context=context)
        except ValidationError as exc:
            errors.extend(
                errors_from_validation(exc, line=line.number, custom_id=_custom_id_of(line.value))
            )
        else:
            _check_model(parsed.body.model, rules, "body.model", line.number)
            earlier = first_seen.setdefault(parsed.custom_id, line.number)
            if earlier != line.number:
                errors.append(
                    ErrorItem(
                        f"line {line.number}: duplicate custom_id '{parsed.custom_id}' "
                        f"(first seen on line {earlier})",
                        line=line.number,
                        custom_id=parsed.custom_id,
                        field="custom_id",
                    )
                )
            elif not errors:
                requests.append(_line_request(parsed, len(requests), options.defaults))
                line_numbers.append(line.number)
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
    if errors:
        raise validation_problem(errors, "the JSONL file")
    if not requests:
        message = "the JSONL file holds no requests"
        raise ApiProblem(422, "empty-job", message, [ErrorItem(message)])
    check_prompt_lengths(requests, counter, rules.max_context, line_numbers)
    return NewJob(
        requests=requests,
        metadata=dict(options.metadata or {}),
        model=rules.model_name,
        baseline_sample=options.baseline_sample,
        idempotency_key=options.idempotency_key,
        completion_window=options.completion_window,
    )


def upload_options(raw: dict[str, Any], rules: SubmissionRules) -> UploadOptions:
    """Validate multipart form fields (already JSON-decoded) beside an uploaded file."""
    try:
        return UploadOptions.model_validate(raw, context=validation_context(rules.limits))
    except ValidationError as exc:
        raise validation_problem(errors_from_validation(exc), "the form") from exc
