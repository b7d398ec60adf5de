"""POST /v1/jobs with OpenAI Batch JSONL: raw body (jsonl / x-ndjson) and multipart upload."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from jobs.models import JobRequest
from tests.api.support import (
    ApiTenant,
    assert_job,
    assert_problem,
    batch_line,
    jsonl,
    row_counts,
    services_of,
)


def post_jsonl(
    client: FlaskClient, tenant: ApiTenant, data: bytes, content_type: str = "application/jsonl"
) -> Any:
    return client.post("/v1/jobs", data=data, content_type=content_type, headers=tenant.headers)


@pytest.mark.parametrize("content_type", ["application/jsonl", "application/x-ndjson"])
def test_openai_batch_file_is_accepted(
    client: FlaskClient, app: Flask, tenant: ApiTenant, content_type: str
) -> None:
    completion = {
        "custom_id": "plain",
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": "SmolLM2-135M-Instruct", "prompt": "Once upon", "max_tokens": 5},
    }
    data = jsonl(
        batch_line("a", max_completion_tokens=7, temperature=0.5, top_p=0.9, seed=1, stop="END"),
        "",
        batch_line(
            "b", content=[{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]
        ),
        completion,
    )
    response = post_jsonl(client, tenant, b"\xef\xbb\xbf" + data, content_type)
    assert response.status_code == 201, response.get_data(as_text=True)
    job = assert_job(response.get_json())
    assert job["request_counts"]["total"] == 3
    with services_of(app).sessions() as session:
        rows = session.scalars(
            select(JobRequest)
            .where(JobRequest.job_id == job["id"])
            .order_by(JobRequest.input_index)
        ).all()
    assert [r.custom_id for r in rows] == ["a", "b", "plain"]
    assert rows[0].params["max_tokens"] == 7 and rows[0].params["stop"] == ["END"]
    assert rows[1].prompt["messages"][0]["content"] == "Hi there"
    assert rows[2].prompt["text"] == "Once upon"


def test_broken_line_in_the_middle_names_the_line(
    client: FlaskClient, app: Flask, tenant: ApiTenant
) -> None:
    lines: list[dict[str, Any] | str] = [batch_line(f"r{i}") for i in range(10)]
    lines[4] = '{"custom_id": "r4", "method": "POST",'
    before = row_counts(app)
    problem = assert_problem(post_jsonl(client, tenant, jsonl(*lines)), 400, "line 5")
    assert problem["errors"][0]["line"] == 5
    assert row_counts(app) == before


def test_non_utf8_line_names_the_line(client: FlaskClient, app: Flask, tenant: ApiTenant) -> None:
    data = jsonl(batch_line("r0"), batch_line("r1")) + b'{"custom_id": "\xc3\x28"}\n'
    before = row_counts(app)
    problem = assert_problem(post_jsonl(client, tenant, data), 400, "line 3", "UTF-8")
    assert problem["type"].endswith("invalid-encoding")
    assert row_counts(app) == before


def test_custom_id_repeated_on_line_40000(
    client: FlaskClient, app: Flask, tenant: ApiTenant
) -> None:
    line = json.dumps(batch_line("ID")) + "\n"
    data = "".join(line.replace('"ID"', f'"r{i}"') for i in range(39_999))
    data += line.replace('"ID"', '"r123"')
    before = row_counts(app)
    problem = assert_problem(
        post_jsonl(client, tenant, data.encode()), 422, "line 40000", "first seen on line 124"
    )
    assert problem["errors"][0] == {
        "message": "line 40000: duplicate custom_id 'r123' (first seen on line 124)",
        "line": 40000,
        "custom_id": "r123",
        "field": "custom_id",
    }
    assert row_counts(app) == before


@pytest.mark.parametrize(
    ("line", "mention"),
    [
        (batch_line("x", logprobs=True), "unknown field 'logprobs'"),
        (batch_line("x", max_tokens=10**9), "body.max_tokens"),
        (batch_line("x", max_completion_tokens=10**9), "body.max_completion_tokens"),
        (batch_line("x", max_tokens=4, max_completion_tokens=4), "not both"),
        (batch_line("x", model="gpt-4o-mini"), "gpt-4o-mini"),
        (batch_line("x", temperature=-1), "body.temperature"),
        (batch_line("x", stop=["a"] * 5), "body.stop"),
        ({**batch_line("x"), "method": "GET"}, "method"),
        ({**batch_line("x"), "url": "/v1/embeddings"}, "url"),
        ({**batch_line("x"), "extra": 1}, "unknown field 'extra'"),
        ({**batch_line("x"), "url": "/v1/completions"}, "body.prompt"),
        ({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions"}, "body"),
        ([1, 2, 3], "line 2"),
        (batch_line(""), "custom_id"),
    ],
)
def test_bad_line_is_rejected_naming_line_and_field(
    client: FlaskClient, app: Flask, tenant: ApiTenant, line: Any, mention: str
) -> None:
    before = row_counts(app)
    problem = assert_problem(
        post_jsonl(client, tenant, jsonl(batch_line("ok"), line)), 422, "line 2", mention
    )
    assert problem["errors"][0]["line"] == 2
    assert row_counts(app) == before


def test_prompt_over_context_in_jsonl_names_line_and_custom_id(
    client: FlaskClient, app: Flask, tenant: ApiTenant
) -> None:
    data = jsonl(batch_line("short"), batch_line("long", content="word " * 9000))
    before = row_counts(app)
    problem = assert_problem(post_jsonl(client, tenant, data), 422, "line 2", "'long'", "context")
    assert problem["errors"][0]["custom_id"] == "long"
    assert row_counts(app) == before


def test_empty_file_is_rejected(client: FlaskClient, app: Flask, tenant: ApiTenant) -> None:
    assert_problem(post_jsonl(client, tenant, b"\n\n"), 422, "no requests")


def test_too_many_lines_are_rejected(fresh_app: Any, tenant: ApiTenant) -> None:
    app = fresh_app(max_requests_per_job=2)
    before = row_counts(app)
    data = jsonl(batch_line("a"), batch_line("b"), batch_line("c"))
    response = post_jsonl(app.test_client(), tenant, data)
    assert_problem(response, 422, "line 3", "at most 2 requests")
    assert row_counts(app) == before


def test_multipart_upload_with_options(client: FlaskClient, app: Flask, tenant: ApiTenant) -> None:
    form = {
        "file": (io.BytesIO(jsonl(batch_line("a"), batch_line("b"))), "batch.jsonl"),
        "metadata": json.dumps({"source": "upload"}),
        "defaults": json.dumps({"temperature": 0.3}),
        "completion_window": "2h",  # a plain string, like model
    }
    response = client.post("/v1/jobs", data=form, headers=tenant.headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    job = assert_job(response.get_json())
    assert job["metadata"] == {"source": "upload"} and job["request_counts"]["total"] == 2
    assert job["completion_window"] == "2h" and job["expires_at"] == job["created_at"] + 7200
    with services_of(app).sessions() as session:
        params = session.scalars(select(JobRequest.params).where(JobRequest.job_id == job["id"]))
        assert all(p["temperature"] == 0.3 for p in params)


@pytest.mark.parametrize(
    ("form", "status", "mention"),
    [
        ({}, 422, "'file'"),
        ({"color": "red"}, 422, "'color'"),
        ({"metadata": "{not json"}, 400, "not valid JSON"),
        ({"metadata": json.dumps({"k": 5})}, 422, "metadata.k"),
        ({"defaults": json.dumps({"top_p": 0})}, 422, "defaults.top_p"),
        ({"model": "other-model"}, 422, "other-model"),
        ({"completion_window": "24 h"}, 422, "completion_window"),
        ({"completion_window": '"24h"'}, 422, "completion_window"),
    ],
)
def test_bad_multipart_upload_is_rejected(
    client: FlaskClient,
    app: Flask,
    tenant: ApiTenant,
    form: dict[str, Any],
    status: int,
    mention: str,
) -> None:
    if form:
        form = {"file": (io.BytesIO(jsonl(batch_line("a"))), "batch.jsonl"), **form}
    else:
        form = {"metadata": "{}"}  # no file at all
    before = row_counts(app)
    response = client.post(
        "/v1/jobs", data=form, content_type="multipart/form-data", headers=tenant.headers
    )
    assert_problem(response, status, mention)
    assert row_counts(app) == before


def test_broken_line_in_uploaded_file_names_the_line(
    client: FlaskClient, app: Flask, tenant: ApiTenant
) -> None:
    data = jsonl(batch_line("a"), "not json", batch_line("c"))
    form = {"file": (io.BytesIO(data), "batch.jsonl")}
    before = row_counts(app)
    assert_problem(client.post("/v1/jobs", data=form, headers=tenant.headers), 400, "line 2")
    assert row_counts(app) == before


@pytest.mark.parametrize(
    "parts",
    [
        # an unnamed field beside a named unknown one (sorting None with a str was a 500)
        [b"Content-Disposition: form-data", b'Content-Disposition: form-data; name="zz"'],
        [b"Content-Disposition: form-data"],
        [b'Content-Disposition: form-data; filename="a.jsonl"'],
    ],
)
def test_multipart_part_without_a_name_is_422(
    client: FlaskClient, app: Flask, tenant: ApiTenant, parts: list[bytes]
) -> None:
    file_part = b'Content-Disposition: form-data; name="file"; filename="b.jsonl"'
    body = b"".join(
        b"--B\r\n" + headers + b"\r\n\r\n" + content + b"\r\n"
        for headers, content in [*((p, b"x") for p in parts), (file_part, jsonl(batch_line("a")))]
    )
    before = row_counts(app)
    response = client.post(
        "/v1/jobs",
        data=body + b"--B--\r\n",
        content_type="multipart/form-data; boundary=B",
        headers=tenant.headers,
    )
    assert_problem(response, 422, "needs a name")
    assert row_counts(app) == before
