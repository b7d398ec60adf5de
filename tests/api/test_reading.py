"""Reading jobs back: get, list with cursor pagination, results pages and the JSONL stream,
cancel, and Idempotency-Key replays."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import response_models
from tests.api.support import (
    ApiTenant,
    assert_job,
    assert_problem,
    finish_job,
    inline_job,
    row_counts,
)


def create(client: FlaskClient, tenant: ApiTenant, n: int = 2, **headers: str) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=inline_job(n), headers={**tenant.headers, **headers})
    assert response.status_code == 201, response.get_data(as_text=True)
    return assert_job(response.get_json())


def test_get_job_returns_the_job(client: FlaskClient, tenant: ApiTenant) -> None:
    job = create(client, tenant)
    response = client.get(f"/v1/jobs/{job['id']}", headers=tenant.headers)
    assert response.status_code == 200
    assert assert_job(response.get_json())["id"] == job["id"]


def test_list_jobs_pages_newest_first(client: FlaskClient, tenant: ApiTenant) -> None:
    ids = [create(client, tenant, 1)["id"] for _ in range(3)]
    first = client.get("/v1/jobs?limit=2", headers=tenant.headers).get_json()
    response_models.JobList.model_validate(first)
    assert [j["id"] for j in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True and first["last_id"] == ids[1] and first["first_id"] == ids[2]
    second = client.get(f"/v1/jobs?limit=2&after={first['last_id']}", headers=tenant.headers)
    body = second.get_json()
    assert [j["id"] for j in body["data"]] == [ids[0]] and body["has_more"] is False


def test_list_jobs_rejects_bad_query(client: FlaskClient, tenant: ApiTenant) -> None:
    assert_problem(client.get("/v1/jobs?limit=0", headers=tenant.headers), 422, "limit")
    assert_problem(client.get("/v1/jobs?limit=abc", headers=tenant.headers), 422, "limit")
    assert_problem(client.get("/v1/jobs?limit=101", headers=tenant.headers), 422, "limit")
    assert_problem(client.get("/v1/jobs?after=job_0000", headers=tenant.headers), 404, "job_0000")


def test_results_page_in_input_order_with_errors(
    client: FlaskClient, app: Flask, tenant: ApiTenant
) -> None:
    job = create(client, tenant, 6)
    finish_job(app, job["id"], failed=frozenset({2}))
    done = assert_job(client.get(f"/v1/jobs/{job['id']}", headers=tenant.headers).get_json())
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 6, "completed": 5, "failed": 1, "cancelled": 0}
    url = f"/v1/jobs/{job['id']}/results"
    page = client.get(f"{url}?limit=4", headers=tenant.headers).get_json()
    response_models.ResultList.model_validate(page)
    assert [r["index"] for r in page["data"]] == [0, 1, 2, 3]
    assert page["has_more"] is True and page["last_index"] == 3
    assert page["data"][0]["response"]["text"] == "out-0"
    assert page["data"][2]["status"] == "failed"
    assert page["data"][2]["error"] == {"code": "engine_error", "message": "boom"}
    assert page["data"][2]["response"] is None
    rest = client.get(f"{url}?after=3&limit=4", headers=tenant.headers).get_json()
    assert [r["custom_id"] for r in rest["data"]] == ["req-4", "req-5"]
    assert rest["has_more"] is False
    assert_problem(client.get(f"{url}?after=x", headers=tenant.headers), 422, "after")


def test_results_jsonl_streams_openai_batch_output(
    client: FlaskClient, app: Flask, tenant: ApiTenant
) -> None:
    job = create(client, tenant, 5)
    finish_job(app, job["id"], failed=frozenset({4}))
    response = client.get(f"/v1/jobs/{job['id']}/results.jsonl", headers=tenant.headers)
    assert response.status_code == 200 and response.mimetype == "application/jsonl"
    assert response.is_streamed
    lines = [json.loads(x) for x in response.get_data(as_text=True).splitlines()]
    assert [x["custom_id"] for x in lines] == [f"req-{i}" for i in range(5)]
    ok = lines[0]
    assert set(ok) == {"id", "custom_id", "response", "error"} and ok["error"] is None
    assert ok["response"]["status_code"] == 200
    body = ok["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "out-0"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert lines[4]["response"] is None and lines[4]["error"]["code"] == "engine_error"


def test_cancel_a_waiting_job(client: FlaskClient, tenant: ApiTenant) -> None:
    job = create(client, tenant, 3)
    response = client.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers)
    assert response.status_code == 200
    cancelled = assert_job(response.get_json())
    assert cancelled["status"] in ("cancelling", "cancelled")
    assert cancelled["cancelling_at"] is not None
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers)
    assert again.status_code == 200 and again.get_json()["status"] == cancelled["status"]


def test_idempotency_key_returns_the_same_job(
    client: FlaskClient, app: Flask, tenant: ApiTenant, other_tenant: ApiTenant
) -> None:
    first = create(client, tenant, 2, **{"Idempotency-Key": "batch-42"})
    before = row_counts(app)
    response = client.post(
        "/v1/jobs",
        json=inline_job(7),
        headers={**tenant.headers, "Idempotency-Key": "batch-42"},
    )
    assert response.status_code == 201
    assert response.headers["Idempotent-Replayed"] == "true"
    assert response.get_json()["id"] == first["id"]
    assert row_counts(app) == before
    # The same key from another tenant is another job.
    theirs = create(client, other_tenant, 1, **{"Idempotency-Key": "batch-42"})
    assert theirs["id"] != first["id"]


@pytest.mark.parametrize("key", ["k" * 256, "caf\u00e9", "tab\there", "nbsp\u00a0key"])
def test_bad_idempotency_key_is_rejected(
    client: FlaskClient, app: Flask, tenant: ApiTenant, key: str
) -> None:
    before = row_counts(app)
    response = client.post(
        "/v1/jobs", json=inline_job(1), headers={**tenant.headers, "Idempotency-Key": key}
    )
    assert_problem(response, 422, "Idempotency-Key")
    assert row_counts(app) == before


def test_idempotency_keys_the_document_allows_are_accepted(
    client: FlaskClient, tenant: ApiTenant
) -> None:
    from api.schemas import IDEMPOTENCY_KEY_PATTERN

    published = client.get("/openapi.json").get_json()["paths"]["/v1/jobs"]["post"]
    (header,) = published["parameters"]
    assert header["schema"]["pattern"] == IDEMPOTENCY_KEY_PATTERN
    for key in ("a", "order 42 / retry #1", "~" * 255):
        response = client.post(
            "/v1/jobs", json=inline_job(1), headers={**tenant.headers, "Idempotency-Key": key}
        )
        assert response.status_code == 201, (key, response.get_json())


def test_results_query_out_of_range_is_422_not_a_crash(
    client: FlaskClient, tenant: ApiTenant
) -> None:
    job = create(client, tenant, 1)
    url = f"/v1/jobs/{job['id']}/results"
    assert_problem(client.get(f"{url}?after={2**40}", headers=tenant.headers), 422, "after")
    assert_problem(client.get(f"{url}?limit=5&color=red", headers=tenant.headers), 422, "color")
    assert client.get(f"{url}?after={2**31 - 1}", headers=tenant.headers).status_code == 200
