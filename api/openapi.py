"""The OpenAPI 3.1 document: component schemas from the Pydantic models, paths written here.

`build_openapi` is pure (settings in, dict out). Every status code a route can answer is
listed next to it; keep this file in step with `api/routes/` (tests/api check the two agree).
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api import response_models as out
from api.schemas import IDEMPOTENCY_KEY_PATTERN, MAX_INDEX, BatchLine, JobIn, UploadOptions
from jobs.settings import Settings
from jobs.windows import COMPLETION_WINDOW_PATTERN

REF = "#/components/schemas/{model}"
JSONL_MEDIA_TYPES = ("application/jsonl", "application/x-ndjson")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _exactly_one_of(schema: dict[str, Any], first: str, second: str) -> dict[str, Any]:
    """Rewrite an object schema whose fields `first`/`second` are exclusive as a oneOf of two
    complete variants (generators handle that better than a oneOf beside `properties`)."""
    variants = []
    for given, absent in ((first, second), (second, first)):
        variant = copy.deepcopy(schema)
        variant.pop("title", None)
        variant.pop("description", None)
        branches = variant["properties"][given]["anyOf"]
        variant["properties"][given] = next(b for b in branches if b.get("type") != "null")
        variant["properties"][absent] = {"type": "null"}
        variant["required"] = [*variant.get("required", []), given]
        variants.append(variant)
    return {
        "title": schema.get("title"),
        "description": schema.get("description"),
        "oneOf": variants,
    }


def _component_schemas(settings: Settings) -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        JobIn,
        BatchLine,
        UploadOptions,
        out.Job,
        out.JobList,
        out.Result,
        out.ResultList,
        out.Problem,
        out.Health,
        out.Readiness,
    ]
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas: dict[str, Any] = top["$defs"]
    for name in ("SamplingFields", "RequestIn", "BatchBody"):
        for field in ("max_tokens", "max_completion_tokens"):
            prop = schemas[name]["properties"].get(field)
            if prop is not None:
                for branch in prop.get("anyOf", [prop]):
                    if branch.get("type") == "integer":
                        branch["maximum"] = settings.max_tokens_limit
    schemas["JobIn"]["properties"]["requests"]["maxItems"] = settings.max_requests_per_job
    served = {"anyOf": [{"const": settings.model_name}, {"type": "null"}], "default": None}
    for name in ("JobIn", "BatchBody"):
        schemas[name]["properties"]["model"] = served
    for name in INPUT_SCHEMAS:
        _forbid_nul(schemas[name])
    schemas["RequestIn"] = _exactly_one_of(schemas["RequestIn"], "prompt", "messages")
    schemas["JobUpload"] = {
        "type": "object",
        "description": "Multipart upload: a JSONL file of OpenAI Batch lines plus job options.",
        "properties": {
            "file": {"type": "string", "format": "binary", "contentMediaType": "application/jsonl"},
            "metadata": {"type": "string", "description": "JSON object of up to 16 pairs."},
            "defaults": {"type": "string", "description": "JSON object of sampling defaults."},
            "model": {"type": "string", "description": f"Must be '{settings.model_name}'."},
            "baseline_sample": {"type": "string", "description": "A number in [0, 1]."},
            "completion_window": {
                "type": "string",
                "pattern": COMPLETION_WINDOW_PATTERN,
                "description": "As JobIn's, e.g. '24h' (sent as is, not as JSON text).",
            },
        },
        "required": ["file"],
        "additionalProperties": False,
    }
    return schemas


INPUT_SCHEMAS = (
    "JobIn",
    "RequestIn",
    "SamplingFields",
    "MessageIn",
    "BatchLine",
    "BatchBody",
    "BatchMessage",
    "TextPart",
    "UploadOptions",
)
NO_NUL = "^[^\\u0000]*$"


def _forbid_nul(node: Any) -> None:
    """Input strings may not hold NUL (no database stores it): say so in every string schema."""
    if isinstance(node, dict):
        if node.get("type") == "string" and "pattern" not in node and "const" not in node:
            node["pattern"] = NO_NUL
        if isinstance(node.get("propertyNames"), dict):
            node["propertyNames"].setdefault("pattern", NO_NUL)
        for value in node.values():
            _forbid_nul(value)
    elif isinstance(node, list):
        for value in node:
            _forbid_nul(value)


def _problem(description: str, *headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }
    if headers:
        response["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in headers}
    return response


def _json(description: str, schema: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema)}},
        **extra,
    }


PROBLEMS: dict[str, dict[str, Any]] = {
    "400": _problem("Malformed body: not UTF-8, not JSON, or a broken JSONL line (named)."),
    "401": _problem("Missing, unknown or revoked API key.", "WWW-Authenticate"),
    "404": _problem("No such job for this API key (another tenant's job is a 404 too)."),
    "413": _problem("The body is larger than S4C_MAX_BODY_BYTES."),
    "415": _problem("Unsupported Content-Type."),
    "422": _problem("Validation failed; `errors` names each field, line or custom_id."),
    "429": _problem("Rate limit of this API key reached.", "Retry-After"),
    "500": _problem("Unexpected server error (no internals disclosed)."),
    "503": _problem("The database is unreachable; retry later.", "Retry-After"),
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: {"$ref": f"#/components/responses/Problem{code}"} for code in codes}


JOB_ID_PARAM = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^job_[0-9A-Za-z]{1,36}$"},
}
AUTHED = ("401", "429", "500", "503")


def _job_links() -> dict[str, Any]:
    job_id = {"job_id": "$response.body#/id"}
    return {
        "GetJob": {"operationId": "getJob", "parameters": job_id},
        "CancelJob": {"operationId": "cancelJob", "parameters": job_id},
        "ListResults": {"operationId": "listResults", "parameters": job_id},
        "StreamResults": {"operationId": "streamResults", "parameters": job_id},
    }


def _paths(settings: Settings) -> dict[str, Any]:
    jsonl_body = {"schema": {"type": "string", "description": "OpenAI Batch input lines."}}
    return {
        "/v1/jobs": {
            "post": {
                "operationId": "createJob",
                "summary": "Submit a job (inline JSON, JSONL body, or multipart JSONL upload).",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": (
                            "A key already used by this API key returns the job it created "
                            "(201, `Idempotent-Replayed: true`); the body is not compared."
                        ),
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 255,
                            "pattern": IDEMPOTENCY_KEY_PATTERN,
                        },
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("JobIn")},
                        **{media: jsonl_body for media in JSONL_MEDIA_TYPES},
                        "multipart/form-data": {"schema": _ref("JobUpload")},
                    },
                },
                "responses": {
                    "201": _json(
                        "The job was stored (or replayed for a known Idempotency-Key).",
                        "Job",
                        links=_job_links(),
                    ),
                    **_errors("400", "413", "415", "422", *AUTHED),
                },
            },
            "get": {
                "operationId": "listJobs",
                "summary": "This key's jobs, newest first, cursor-paginated.",
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "string", "pattern": "^job_[0-9A-Za-z]{1,36}$"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    },
                ],
                "responses": {
                    "200": _json("A page of jobs.", "JobList"),
                    **_errors("404", "422", *AUTHED),
                },
            },
        },
        "/v1/jobs/{job_id}": {
            "parameters": [JOB_ID_PARAM],
            "get": {
                "operationId": "getJob",
                "summary": "A job's status, request counts, timestamps and statistics.",
                "responses": {"200": _json("The job.", "Job"), **_errors("404", *AUTHED)},
            },
        },
        "/v1/jobs/{job_id}/cancel": {
            "parameters": [JOB_ID_PARAM],
            "post": {
                "operationId": "cancelJob",
                "summary": "Cancel cooperatively; finished results are kept.",
                "responses": {
                    "200": _json("The job after the cancel request.", "Job"),
                    **_errors("404", *AUTHED),
                },
            },
        },
        "/v1/jobs/{job_id}/results": {
            "parameters": [JOB_ID_PARAM],
            "get": {
                "operationId": "listResults",
                "summary": "Results in input order, paginated by input index.",
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": -1, "maximum": MAX_INDEX},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                ],
                "responses": {
                    "200": _json("A page of results.", "ResultList"),
                    **_errors("404", "422", *AUTHED),
                },
            },
        },
        "/v1/jobs/{job_id}/results.jsonl": {
            "parameters": [JOB_ID_PARAM],
            "get": {
                "operationId": "streamResults",
                "summary": "All results as OpenAI Batch output lines, streamed in input order.",
                "responses": {
                    "200": {
                        "description": "One JSON object per line.",
                        "content": {"application/jsonl": {"schema": {"type": "string"}}},
                    },
                    **_errors("404", *AUTHED),
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is up.",
                "security": [],
                "responses": {"200": _json("Up.", "Health")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Database and broker reachable.",
                "security": [],
                "responses": {
                    "200": _json("Ready.", "Readiness"),
                    "503": _problem(
                        "Not ready; `errors` names what is unreachable.", "Retry-After"
                    ),
                },
            }
        },
        "/": {
            "get": {
                "operationId": "dashboard",
                "summary": "The dashboard (HTML; signs in with an API key in the browser).",
                "security": [],
                "responses": {
                    "200": {
                        "description": "HTML page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics: requests, latencies, jobs by status, queue depth.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/docs": {
            "get": {
                "operationId": "docs",
                "summary": "A human-readable index of this document.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "HTML page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1 document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


def build_openapi(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document for an app built with `settings`."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "s4c batch generation API",
            "version": "1.0.0",
            "description": (
                "Bulk text generation jobs with speculative decoding. Errors are RFC 9457 "
                f"problem details. Serving model '{settings.model_name}'."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": _paths(settings),
        "components": {
            "schemas": _component_schemas(settings),
            "responses": {f"Problem{code}": body for code, body in PROBLEMS.items()},
            "headers": {
                "WWW-Authenticate": {
                    "schema": {"type": "string"},
                    "description": "Bearer challenge.",
                },
                "Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait."},
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An s4c_... API key."}
            },
        },
    }
