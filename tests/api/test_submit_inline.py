"""POST /v1/jobs with an inline JSON body: accepted jobs and every rejected input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.api.support import ApiTenant, assert_job, assert_problem, inline_job, row_counts


def submit(client: FlaskClient, tenant: ApiTenant, body: Any, **kwargs: Any) -> Any:
    return client.post("/v1/jobs", json=body, headers=tenant.headers, **kwargs)


def test_inline_job_is_stored_and_returned(
    client: FlaskClient, app: Flask, tenant: ApiTenant
) -> None:
    before = row_counts(app)
    body = inline_job(5, metadata={"team": "nlp"}, defaults={"temperature": 0.7, "seed": 3})
    body["requests"][0] = {
        "custom_id": "chat",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "stop": ["\n"],
    }
    response = submit(client, tenant, body)
    assert response.status_code == 201, response.get_data(as_text=True)
    job = assert_job(response.get_json())
    assert job["id"].startswith("job_")
    assert job["status"] == "validating"
    assert job["request_counts"] == {"total": 5, "completed": 0, "failed": 0, "cancelled": 0}
    assert job["metadata"] == {"team": "nlp"}
    assert response.headers["Location"].endswith(f"/v1/jobs/{job['id']}")
    after = row_counts(app)
    assert after["job_requests"] - before["job_requests"] == 5
    assert after["chunks"] - before["chunks"] == 2  # chunk_size 4 in the test settings
    assert after["jobs"] - before["jobs"] == 1


def test_completion_window_sets_when_the_job_expires(
    client: FlaskClient, tenant: ApiTenant
) -> None:
    response = submit(client, tenant, {**inline_job(2), "completion_window": "24h"})
    assert response.status_code == 201, response.get_data(as_text=True)
    job = assert_job(response.get_json())
    assert job["completion_window"] == "24h"
    assert job["expires_at"] == job["created_at"] + 86400
    plain = assert_job(submit(client, tenant, inline_job(1)).get_json())
    assert plain["completion_window"] is None and plain["expires_at"] is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_tokens": "5"}, "requests[0].max_tokens"),
        ({"max_tokens": 1.5}, "requests[0].max_tokens"),
        ({"max_tokens": True}, "requests[0].max_tokens"),
        ({"max_tokens": 0}, "requests[0].max_tokens"),
        ({"max_tokens": 10**9}, "requests[0].max_tokens"),
        ({"temperature": 2.5}, "requests[0].temperature"),
        ({"temperature": -0.1}, "requests[0].temperature"),
        ({"top_p": 0}, "requests[0].top_p"),
        ({"top_p": 1.5}, "requests[0].top_p"),
        ({"top_k": -1}, "requests[0].top_k"),
        ({"seed": -1}, "requests[0].seed"),
        ({"seed": 2**70}, "requests[0].seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "requests[0].stop"),
        ({"stop": "a"}, "requests[0].stop"),
        ({"custom_id": ""}, "requests[0].custom_id"),
        ({"custom_id": "x" * 65}, "requests[0].custom_id"),
        ({"custom_id": 7}, "requests[0].custom_id"),
        ({"frequency_penalty": 1}, "requests[0].frequency_penalty"),
        ({"prompt": None}, "requests[0]"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "requests[0]"),
        ({"prompt": "a\u0000b"}, "requests[0].prompt"),
        ({"prompt": ""}, "requests[0].prompt"),
    ],
)
def test_bad_request_field_is_named_and_nothing_written(
    client: FlaskClient, app: Flask, tenant: ApiTenant, change: dict[str, Any], field: str
) -> None:
    body = inline_job(2)
    body["requests"][0].update(change)
    before = row_counts(app)
    problem = assert_problem(submit(client, tenant, body), 422, field)
    assert any(item.get("field") == field for item in problem["errors"]), problem
    assert row_counts(app) == before


@pytest.mark.parametrize(
    ("body", "mention"),
    [
        ({"requests": []}, "requests"),
        ({}, "requests"),
        ({"requests": [{"custom_id": "a", "messages": []}]}, "requests[0].messages"),
        (
            {"requests": [{"custom_id": "a", "messages": [{"role": "robot", "content": "x"}]}]},
            "requests[0].messages[0].role",
        ),
        (inline_job(1, color="red"), "unknown field 'color'"),
        (inline_job(1, metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
        (inline_job(1, metadata={"k" * 65: "v"}), "metadata"),
        (inline_job(1, metadata={"k": "v" * 513}), "metadata.k"),
        (inline_job(1, metadata={"k": 1}), "metadata.k"),
        (inline_job(1, defaults={"temperature": 9}), "defaults.temperature"),
        (inline_job(1, baseline_sample=2), "baseline_sample"),
        ({**inline_job(1), "completion_window": "24"}, "completion_window"),
        ({**inline_job(1), "completion_window": "0h"}, "completion_window"),
        ({**inline_job(1), "completion_window": "1w"}, "completion_window"),
        ({**inline_job(1), "completion_window": "24H"}, "completion_window"),
        ({**inline_job(1), "completion_window": "1000000d"}, "completion_window"),
        ({**inline_job(1), "completion_window": 24}, "completion_window"),
        ([1, 2], "body"),
    ],
)
def test_bad_job_field_is_rejected_with_422(
    client: FlaskClient, app: Flask, tenant: ApiTenant, body: Any, mention: str
) -> None:
    before = row_counts(app)
    assert_problem(submit(client, tenant, body), 422, mention)
    assert row_counts(app) == before


def test_duplicate_custom_id_names_both_positions(
    client: FlaskClient, app: Flask, tenant: ApiTenant
) -> None:
    body = inline_job(3)
    body["requests"][2]["custom_id"] = "req-0"
    before = row_counts(app)
    problem = assert_problem(submit(client, tenant, body), 422, "duplicate custom_id 'req-0'")
    assert "requests[0]" in problem["detail"] and problem["errors"][0]["custom_id"] == "req-0"
    assert row_counts(app) == before


def test_unknown_model_is_rejected(client: FlaskClient, app: Flask, tenant: ApiTenant) -> None:
    before = row_counts(app)
    assert_problem(submit(client, tenant, inline_job(1, model="gpt-4o")), 422, "gpt-4o")
    assert row_counts(app) == before


def test_prompt_over_context_names_the_custom_id(
    client: FlaskClient, app: Flask, tenant: ApiTenant
) -> None:
    body = inline_job(2)
    body["requests"][1]["prompt"] = "hello " * 9000
    before = row_counts(app)
    problem = assert_problem(submit(client, tenant, body), 422, "req-1", "context")
    assert problem["errors"][0]["custom_id"] == "req-1"
    assert row_counts(app) == before


def test_max_tokens_plus_prompt_over_context_is_rejected(
    client: FlaskClient, app: Flask, tenant: ApiTenant
) -> None:
    body = inline_job(1)
    body["requests"][0].update(prompt="hello " * 5000, max_tokens=4000)
    assert_problem(submit(client, tenant, body), 422, "req-0", "8192")


@pytest.mark.parametrize(
    ("raw", "slug", "mention"),
    [
        (b'{"requests": [', "invalid-json", "not valid JSON"),
        (b'{"requests": [{"custom_id": "a", "prompt": "\xff\xfe"}]}', "invalid-encoding", "UTF-8"),
        (
            b'{"requests": [{"custom_id": "a", "prompt": "x", "temperature": NaN}]}',
            "invalid-json",
            "NaN",
        ),
        (b"[" * 100_000, "invalid-json", "not valid JSON"),
        (
            b'{"requests": [{"custom_id": "a", "prompt": "x", "seed": 1' + b"0" * 5000 + b"}]}",
            "invalid-json",
            "not valid JSON",
        ),
        (b"", "invalid-json", "not valid JSON"),
    ],
)
def test_malformed_json_body_is_400(
    client: FlaskClient, app: Flask, tenant: ApiTenant, raw: bytes, slug: str, mention: str
) -> None:
    before = row_counts(app)
    response = client.post(
        "/v1/jobs", data=raw, content_type="application/json", headers=tenant.headers
    )
    problem = assert_problem(response, 400, mention)
    assert problem["type"].endswith(slug)
    assert row_counts(app) == before


def test_too_many_requests_in_a_job(fresh_app: Any, tenant: ApiTenant) -> None:
    app = fresh_app(max_requests_per_job=3)
    before = row_counts(app)
    response = app.test_client().post("/v1/jobs", json=inline_job(4), headers=tenant.headers)
    assert_problem(response, 422, "at most 3 requests")
    assert row_counts(app) == before


def test_unsupported_content_type_is_415(
    client: FlaskClient, app: Flask, tenant: ApiTenant
) -> None:
    before = row_counts(app)
    response = client.post(
        "/v1/jobs",
        data=json.dumps(inline_job(1)),
        content_type="text/plain",
        headers=tenant.headers,
    )
    problem = assert_problem(response, 415, "text/plain", "application/jsonl")
    assert problem["instance"] == "/v1/jobs"
    assert row_counts(app) == before
