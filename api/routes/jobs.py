"""`/v1/jobs`: submit, list, read, cancel jobs and read their results (JSON pages or JSONL).

Views are thin: decode and validate the input (`api.jsonl`, `api.submission`), call
`jobs.store` with typed values, commit, then enqueue. Every other tenant's job is a 404.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any, TypeVar, cast

from flask import Blueprint, Response, request, stream_with_context, url_for
from kombu.exceptions import OperationalError as BrokerError
from pydantic import BaseModel, ValidationError

from api.auth import current_tenant, require_tenant
from api.jsonl import decode_json, iter_jsonl
from api.problems import ApiProblem, ErrorItem
from api.result_shapes import batch_output_line
from api.schemas import IDEMPOTENCY_KEY_PATTERN, JobListQuery, ResultListQuery
from api.services import db_session, services
from api.submission import (
    JobOptions,
    errors_from_validation,
    job_from_inline,
    job_from_jsonl,
    upload_options,
    validation_problem,
)
from jobs import messaging, store
from jobs.models import Job
from jobs.types import NewJob

logger = logging.getLogger(__name__)

bp = Blueprint("jobs", __name__, url_prefix="/v1")
bp.before_request(require_tenant)

JSON_TYPES = ("application/json",)
JSONL_TYPES = ("application/jsonl", "application/x-ndjson", "application/json-lines")
MULTIPART_TYPE = "multipart/form-data"
FORM_FIELDS = ("metadata", "defaults", "model", "baseline_sample", "completion_window")
PLAIN_FORM_FIELDS = ("model", "completion_window")  # strings as sent; the others are JSON
JOB_ID = re.compile(r"job_[0-9A-Za-z]{1,36}")
IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
RESULTS_YIELD_PER = 500
BODY_BUFFER_BYTES = 64 * 1024

QueryT = TypeVar("QueryT", bound=BaseModel)


def _query(model: type[QueryT]) -> QueryT:
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        errors = errors_from_validation(exc)
        raise validation_problem(errors, "the query") from exc


def _not_found(job_id: str) -> ApiProblem:
    return ApiProblem(404, "not-found", f"no job '{job_id}' for this API key")


def _owned_job(job_id: str) -> Job:
    if JOB_ID.fullmatch(job_id) is None:
        raise _not_found(job_id[:80])
    job = store.get_job(db_session(), current_tenant(), job_id)
    if job is None:
        raise _not_found(job_id)
    return job


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if IDEMPOTENCY_KEY.fullmatch(key) is None:
        message = "Idempotency-Key must be 1..255 visible ASCII characters (inner spaces allowed)"
        raise ApiProblem(
            422, "validation-error", message, [ErrorItem(message, field="Idempotency-Key")]
        )
    return key


def _form_options(idempotency_key: str | None) -> JobOptions:
    # werkzeug keys a part without a `name` in its Content-Disposition as None; sorting that
    # beside real names raised TypeError (a 500 found by fuzzing). Such a part is a 422.
    if None in request.form or None in request.files:
        message = "every multipart part needs a name in its Content-Disposition header"
        raise ApiProblem(422, "validation-error", message, [ErrorItem(message)])
    unknown = sorted(set(request.form) - set(FORM_FIELDS))
    unknown_files = sorted(set(request.files) - {"file"})
    if unknown or unknown_files:
        names = ", ".join(f"'{n}'" for n in unknown + unknown_files)
        message = f"unknown form field(s) {names}; allowed: file, {', '.join(FORM_FIELDS)}"
        raise ApiProblem(422, "validation-error", message, [ErrorItem(message)])
    # metadata, defaults and baseline_sample are JSON text; model and completion_window are
    # plain strings.
    raw: dict[str, Any] = {
        name: value
        if name in PLAIN_FORM_FIELDS
        else decode_json(value.encode("utf-8", "surrogatepass"))
        for name, value in request.form.items()
    }
    options = upload_options(raw, services().rules)
    return JobOptions(
        defaults=options.defaults,
        metadata=options.metadata,
        model=options.model,
        baseline_sample=options.baseline_sample,
        idempotency_key=idempotency_key,
        completion_window=options.completion_window,
    )


def _parse_submission(idempotency_key: str | None) -> NewJob:
    """Decode and validate the body in whichever of the three forms it came (or 4xx)."""
    rules = services().rules
    codec = services().codec
    mimetype = request.mimetype
    if mimetype in JSON_TYPES:
        raw = decode_json(request.get_data(cache=False))
        return job_from_inline(raw, rules, codec, idempotency_key)
    if mimetype in JSONL_TYPES:
        options = JobOptions(idempotency_key=idempotency_key)
        # The WSGI stream reads a byte per call in readline(); buffer it (bounded, 64 KiB).
        raw = cast(io.RawIOBase, request.stream)  # werkzeug's LimitedStream is a RawIOBase
        body = io.BufferedReader(raw, buffer_size=BODY_BUFFER_BYTES)
        return job_from_jsonl(iter_jsonl(body), options, rules, codec)
    if mimetype == MULTIPART_TYPE:
        options = _form_options(idempotency_key)
        upload = request.files.get("file")
        if upload is None:
            message = "multipart uploads need a 'file' field holding the JSONL"
            raise ApiProblem(422, "validation-error", message, [ErrorItem(message, field="file")])
        return job_from_jsonl(iter_jsonl(upload.stream), options, rules, codec)
    accepted = ", ".join((*JSON_TYPES, *JSONL_TYPES, MULTIPART_TYPE))
    raise ApiProblem(
        415,
        "unsupported-media-type",
        f"Content-Type '{mimetype or '(none)'}' is not accepted; send one of: {accepted}",
        headers={"Accept-Post": accepted},
    )


def _enqueue(job_id: str, chunk_ids: list[int]) -> None:
    celery = services().celery
    if celery is None:
        logger.warning("job %s stored but no broker is configured; chunks wait for a sweep", job_id)
        return
    queue = messaging.queue_for_model(services().settings.model_name)
    try:
        messaging.enqueue_chunks(celery, chunk_ids, queue)
    except (BrokerError, OSError) as exc:
        logger.warning(
            "job %s stored but enqueue failed (%s); the sweep will pick it up", job_id, exc
        )


def _job_response(job: Job, status: int = 200) -> Response:
    response = Response(json.dumps(store.job_view(job)), status=status, mimetype="application/json")
    if status == 201:
        response.headers["Location"] = url_for("jobs.get_job", job_id=job.id)
    return response


@bp.post("/jobs")
def create_job() -> Response:
    session = db_session()
    tenant = current_tenant()
    idempotency_key = _idempotency_key()
    if idempotency_key is not None:
        earlier = store.find_idempotent_job(session, tenant, idempotency_key)
        if earlier is not None:
            response = _job_response(earlier, 201)
            response.headers["Idempotent-Replayed"] = "true"
            return response
    new_job = _parse_submission(idempotency_key)
    job = store.create_job(session, tenant, new_job, settings=services().settings)
    chunk_ids = store.chunk_ids(session, job.id)
    session.commit()
    _enqueue(job.id, chunk_ids)
    return _job_response(job, 201)


@bp.get("/jobs")
def list_jobs() -> Response:
    query = _query(JobListQuery)
    if query.after is not None and JOB_ID.fullmatch(query.after) is None:
        raise _not_found(query.after)
    try:
        jobs, has_more = store.list_jobs(db_session(), current_tenant(), query.after, query.limit)
    except store.UnknownCursor as exc:
        raise _not_found(query.after or "") from exc
    data = [store.job_view(job) for job in jobs]
    body = {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
    return Response(json.dumps(body), mimetype="application/json")


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    return _job_response(_owned_job(job_id))


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    session = db_session()
    _owned_job(job_id)
    job = store.cancel_job(session, current_tenant(), job_id)
    if job is None:
        raise _not_found(job_id)
    session.commit()
    return _job_response(job)


@bp.get("/jobs/<job_id>/results")
def list_results(job_id: str) -> Response:
    query = _query(ResultListQuery)
    job = _owned_job(job_id)
    rows, has_more = store.list_results(
        db_session(), current_tenant(), job.id, query.after, query.limit
    )
    data = [store.result_view(row) for row in rows]
    body = {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "last_index": data[-1]["index"] if data else None,
    }
    return Response(json.dumps(body), mimetype="application/json")


@bp.get("/jobs/<job_id>/results.jsonl")
def stream_results(job_id: str) -> Response:
    job = _owned_job(job_id)
    job_key, model, tenant = job.id, job.model, current_tenant()
    sessions = services().read_sessions

    def lines() -> Iterator[str]:
        # Its own read session: the response outlives the view; rows come a batch at a time.
        with sessions() as session:
            rows = store.iter_results(session, tenant, job_key, batch_size=RESULTS_YIELD_PER)
            for row in rows:
                yield json.dumps(batch_output_line(row, model)) + "\n"

    return Response(stream_with_context(lines()), mimetype="application/jsonl")
