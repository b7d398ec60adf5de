"""Pydantic v2 models of what clients send: inline jobs and OpenAI Batch input lines.

They check shape, types and ranges only (extra fields forbidden, strict types). Limits that
depend on the deployment (max_tokens, requests per job) are read from the validation context
key `limits` (an `InputLimits`). Turning models into engine/store values is `api.submission`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from jobs.windows import COMPLETION_WINDOW_PATTERN

MAX_METADATA_PAIRS = 16
MAX_SEED = 2**63 - 1
MAX_TOP_K = 2**31 - 1
MAX_INDEX = 2**31 - 1  # input indexes are 32-bit INTEGER columns
# Idempotency keys: 1..255 visible ASCII characters, inner spaces allowed. HTTP strips a
# header value's outer whitespace and carries other bytes as Latin-1 guesses, so only these
# survive a round trip unchanged. The OpenAPI document publishes the same pattern.
IDEMPOTENCY_KEY_PATTERN = r"^[!-~](?:[ -~]{0,253}[!-~])?$"
MAX_STOP_STRINGS = 4


CompletionWindow = Annotated[
    str,
    Field(
        pattern=COMPLETION_WINDOW_PATTERN,
        description=(
            "How long the job may take, e.g. '24h' (OpenAI Batch's value): a whole number of "
            "s, m, h or d (1 to 999999). Past it the job stops and ends `expired`: results "
            "kept, requests without one get a `batch_expired` error."
        ),
        examples=["24h"],
    ),
]


def _integral(value: Any) -> Any:
    # JSON has one number type: 5.0 is an integer to JSON Schema, so accept it as 5.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Constraints first, then the validator: that order keeps minimum/maximum in the JSON schema.
PositiveInt = Annotated[int, Field(ge=1), BeforeValidator(_integral)]
TopK = Annotated[int, Field(ge=0, le=MAX_TOP_K), BeforeValidator(_integral)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED), BeforeValidator(_integral)]
CustomId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=256)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_PAIRS)]


@dataclass(frozen=True)
class InputLimits:
    """Deployment limits the models check (passed as validation context `limits`)."""

    max_tokens: int
    max_requests: int


def _limits(info: ValidationInfo) -> InputLimits | None:
    context = info.context
    if isinstance(context, dict):
        limits = context.get("limits")
        if isinstance(limits, InputLimits):
            return limits
    return None


def check_storable(text: str) -> str:
    """Reject strings a database cannot hold: NUL characters and unpaired surrogates."""
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must not contain unpaired surrogates") from exc
    return text


def _check_strings(value: Any) -> Any:
    if isinstance(value, str):
        check_storable(value)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)
    return value


class StrictModel(BaseModel):
    """Base of every input model: unknown fields rejected, no type coercion, storable text."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _storable_strings(cls, value: Any) -> Any:
        return _check_strings(value)


class SamplingFields(StrictModel):
    """Generation knobs; every field optional (job defaults, then engine defaults fill gaps)."""

    max_tokens: PositiveInt | None = Field(None, description="Tokens to generate at most.")
    temperature: float | None = Field(None, ge=0, le=2, description="0 means greedy.")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: TopK | None = Field(None, description="0 disables top-k.")
    seed: Seed | None = None
    stop: list[StopString] | None = Field(None, max_length=MAX_STOP_STRINGS)

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens_within_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        limits = _limits(info)
        if value is not None and limits is not None and value > limits.max_tokens:
            raise ValueError(f"max_tokens must be <= {limits.max_tokens} (S4C_MAX_TOKENS_LIMIT)")
        return value


class MessageIn(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: str


class RequestIn(SamplingFields):
    """One inline request: `custom_id` plus exactly one of `prompt` or `messages`."""

    custom_id: CustomId
    prompt: str | None = Field(None, min_length=1)
    messages: list[MessageIn] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _prompt_xor_messages(self) -> RequestIn:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class JobIn(StrictModel):
    """Inline JSON job submission (`POST /v1/jobs`, `Content-Type: application/json`)."""

    requests: list[RequestIn] = Field(min_length=1)
    defaults: SamplingFields | None = None
    metadata: Metadata | None = None
    model: str | None = Field(None, min_length=1, max_length=256)
    baseline_sample: float | None = Field(
        None, ge=0, le=1, description="Fraction of requests re-run with plain decoding."
    )
    completion_window: CompletionWindow | None = None

    @field_validator("requests")
    @classmethod
    def _not_too_many(cls, value: list[RequestIn], info: ValidationInfo) -> list[RequestIn]:
        limits = _limits(info)
        if limits is not None and len(value) > limits.max_requests:
            raise ValueError(
                f"a job holds at most {limits.max_requests} requests (S4C_MAX_REQUESTS_PER_JOB)"
            )
        return value


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class BatchMessage(StrictModel):
    """A chat message as OpenAI batch files write it (string content or text parts)."""

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class BatchBody(SamplingFields):
    """The `body` of an OpenAI Batch line; `max_completion_tokens` is an alias of max_tokens."""

    model_config = ConfigDict(
        json_schema_extra={
            "not": {
                "required": ["max_tokens", "max_completion_tokens"],
                "properties": {
                    "max_tokens": {"type": "integer"},
                    "max_completion_tokens": {"type": "integer"},
                },
            }
        }
    )

    model: str | None = Field(None, min_length=1, max_length=256)
    messages: list[BatchMessage] | None = Field(None, min_length=1)
    prompt: str | None = Field(None, min_length=1)
    max_completion_tokens: PositiveInt | None = None
    stop: list[StopString] | StopString | None = Field(None)  # type: ignore[assignment]

    @field_validator("max_completion_tokens")
    @classmethod
    def _alias_within_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        limits = _limits(info)
        if value is not None and limits is not None and value > limits.max_tokens:
            raise ValueError(
                f"max_completion_tokens must be <= {limits.max_tokens} (S4C_MAX_TOKENS_LIMIT)"
            )
        return value

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: list[str] | str | None) -> list[str] | str | None:
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        return value

    @model_validator(mode="after")
    def _one_length_field(self) -> BatchBody:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        return self

    @property
    def stop_strings(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop

    @property
    def effective_max_tokens(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens


def _body_for(url: str, needed: str, absent: str) -> dict[str, Any]:
    return {
        "properties": {
            "url": {"const": url},
            "body": {
                "required": [needed],
                "properties": {needed: {"type": ["array", "string"]}, absent: {"type": "null"}},
            },
        }
    }


class BatchLine(StrictModel):
    """One line of an OpenAI Batch input file."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                _body_for("/v1/chat/completions", "messages", "prompt"),
                _body_for("/v1/completions", "prompt", "messages"),
            ]
        }
    )

    custom_id: CustomId
    method: Literal["POST"]
    url: Literal["/v1/chat/completions", "/v1/completions"]
    body: BatchBody

    @model_validator(mode="after")
    def _body_matches_url(self) -> BatchLine:
        if self.url == "/v1/chat/completions" and (
            self.body.messages is None or self.body.prompt is not None
        ):
            raise ValueError("/v1/chat/completions lines need body.messages (and no prompt)")
        if self.url == "/v1/completions" and (
            self.body.prompt is None or self.body.messages is not None
        ):
            raise ValueError("/v1/completions lines need body.prompt (and no messages)")
        return self


class UploadOptions(StrictModel):
    """Job-level fields that travel beside a JSONL file (multipart form fields)."""

    defaults: SamplingFields | None = None
    metadata: Metadata | None = None
    baseline_sample: float | None = Field(None, ge=0, le=1)
    model: str | None = Field(None, min_length=1, max_length=256)
    completion_window: CompletionWindow | None = None


def validation_context(limits: InputLimits) -> dict[str, Any]:
    return {"limits": limits}


class JobListQuery(BaseModel):
    """Query of `GET /v1/jobs` (query strings are coerced; unknown parameters rejected)."""

    model_config = ConfigDict(extra="forbid")

    after: str | None = Field(None, min_length=1, max_length=80)
    limit: int = Field(20, ge=1, le=100)


class ResultListQuery(BaseModel):
    """Query of `GET /v1/jobs/{id}/results`: results with index > `after`, in input order."""

    model_config = ConfigDict(extra="forbid")

    after: int | None = Field(None, ge=-1, le=MAX_INDEX)
    limit: int = Field(100, ge=1, le=1000)
