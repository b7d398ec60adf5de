"""Who may do what: bearer keys (missing, wrong, revoked), tenant isolation on every endpoint,
per-key rate limits, body-size limits and method/route errors, all as problem+json."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from jobs import store
from jobs.db import transaction
from tests.api.support import (
    ApiTenant,
    assert_job,
    assert_problem,
    batch_line,
    inline_job,
    jsonl,
    row_counts,
    services_of,
)

JOB_ENDPOINTS = [
    ("GET", "/v1/jobs/{id}"),
    ("POST", "/v1/jobs/{id}/cancel"),
    ("GET", "/v1/jobs/{id}/results"),
    ("GET", "/v1/jobs/{id}/results.jsonl"),
]
ALL_ENDPOINTS = [("POST", "/v1/jobs"), ("GET", "/v1/jobs"), *JOB_ENDPOINTS]


@pytest.fixture
def job_id(client: FlaskClient, tenant: ApiTenant) -> str:
    response = client.post("/v1/jobs", json=inline_job(2), headers=tenant.headers)
    assert response.status_code == 201
    return str(assert_job(response.get_json())["id"])


def call(client: FlaskClient, method: str, path: str, headers: dict[str, str]) -> Any:
    kwargs: dict[str, Any] = {"headers": headers}
    if path == "/v1/jobs" and method == "POST":
        kwargs["json"] = inline_job(1)
    return client.open(path, method=method, **kwargs)


@pytest.mark.parametrize(("method", "path"), ALL_ENDPOINTS)
@pytest.mark.parametrize(
    ("headers", "invalid"),
    [
        ({}, False),
        ({"Authorization": "Bearer s4c_not-a-real-key"}, True),
        ({"Authorization": "Bearer nonsense"}, True),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, True),
        ({"Authorization": "Bearer "}, True),
    ],
)
def test_missing_or_wrong_key_is_401(
    client: FlaskClient,
    app: Flask,
    job_id: str,
    method: str,
    path: str,
    headers: dict[str, str],
    invalid: bool,
) -> None:
    before = row_counts(app)
    response = call(client, method, path.format(id=job_id), headers)
    assert_problem(response, 401)
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer") and ('error="invalid_token"' in challenge) == invalid
    assert row_counts(app) == before


def test_revoked_key_is_401(
    client: FlaskClient, app: Flask, make_tenant: Callable[[], ApiTenant]
) -> None:
    tenant = make_tenant()
    assert client.get("/v1/jobs", headers=tenant.headers).status_code == 200
    with transaction(services_of(app).sessions) as session:
        assert store.revoke_api_key(session, tenant.key_id)
    for method, path in ALL_ENDPOINTS:
        response = call(client, method, path.format(id="job_abc"), tenant.headers)
        assert_problem(response, 401, "revoked")


@pytest.mark.parametrize(("method", "path"), JOB_ENDPOINTS)
def test_another_tenants_job_is_404(
    client: FlaskClient,
    app: Flask,
    job_id: str,
    other_tenant: ApiTenant,
    method: str,
    path: str,
) -> None:
    before = row_counts(app)
    response = call(client, method, path.format(id=job_id), other_tenant.headers)
    assert_problem(response, 404, job_id)
    assert row_counts(app) == before


def test_another_tenants_job_is_not_listed_nor_a_cursor(
    client: FlaskClient, job_id: str, tenant: ApiTenant, other_tenant: ApiTenant
) -> None:
    mine = client.get("/v1/jobs", headers=tenant.headers).get_json()
    assert job_id in [j["id"] for j in mine["data"]]
    theirs = client.get("/v1/jobs", headers=other_tenant.headers).get_json()
    assert job_id not in [j["id"] for j in theirs["data"]]
    response = client.get(f"/v1/jobs?after={job_id}", headers=other_tenant.headers)
    assert_problem(response, 404)


@pytest.mark.parametrize("job_ref", ["job_0123456789abcdef", "nothing", "job_%00x", "job_ü"])
def test_unknown_job_is_404(client: FlaskClient, tenant: ApiTenant, job_ref: str) -> None:
    assert_problem(client.get(f"/v1/jobs/{job_ref}", headers=tenant.headers), 404)


def test_rate_limit_answers_429_with_retry_after(
    fresh_app: Callable[..., Flask], make_tenant: Callable[[], ApiTenant]
) -> None:
    app = fresh_app(rate_limit_per_minute=3)
    client = app.test_client()
    tenant, other = make_tenant(), make_tenant()
    statuses = [client.get("/v1/jobs", headers=tenant.headers).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    response = client.get("/v1/jobs", headers=tenant.headers)
    assert_problem(response, 429, "3 requests per minute")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    # Limits are per key.
    assert client.get("/v1/jobs", headers=other.headers).status_code == 200


def test_rate_limit_is_shared_across_apps_through_redis(
    fresh_app: Callable[..., Flask], tenant: ApiTenant
) -> None:
    first, second = fresh_app(rate_limit_per_minute=2), fresh_app(rate_limit_per_minute=2)
    assert first.test_client().get("/v1/jobs", headers=tenant.headers).status_code == 200
    assert second.test_client().get("/v1/jobs", headers=tenant.headers).status_code == 200
    assert_problem(first.test_client().get("/v1/jobs", headers=tenant.headers), 429)


class ExplodingStream(io.RawIOBase):
    """A request body that fails the test if anyone reads it."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise AssertionError("the body was read")


def test_oversized_body_is_413_before_reading(
    fresh_app: Callable[..., Flask], tenant: ApiTenant
) -> None:
    app = fresh_app(max_body_bytes=1000)
    before = row_counts(app)
    for content_type in ("application/json", "application/jsonl", "multipart/form-data"):
        response = app.test_client().post(
            "/v1/jobs",
            content_type=content_type,
            headers=tenant.headers,
            environ_overrides={"wsgi.input": ExplodingStream(), "CONTENT_LENGTH": "5000000"},
        )
        assert_problem(response, 413, "5000000", "1000")
    assert row_counts(app) == before


def test_oversized_chunked_body_is_413(fresh_app: Callable[..., Flask], tenant: ApiTenant) -> None:
    app = fresh_app(max_body_bytes=1000)
    before = row_counts(app)
    body = jsonl(*(batch_line(f"r{i}") for i in range(50)))
    response = app.test_client().post(
        "/v1/jobs",
        content_type="application/jsonl",
        headers={**tenant.headers, "Transfer-Encoding": "chunked"},
        # What a server sets for a chunked body: no length, the stream ends by itself.
        environ_overrides={
            "wsgi.input": io.BytesIO(body),
            "wsgi.input_terminated": True,
            "CONTENT_LENGTH": "",
        },
    )
    assert_problem(response, 413)
    assert row_counts(app) == before


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/jobs", {"GET", "POST"}),
        ("PUT", "/v1/jobs/job_abc", {"GET"}),
        ("GET", "/v1/jobs/job_abc/cancel", {"POST"}),
        ("POST", "/healthz", {"GET"}),
    ],
)
def test_wrong_method_is_405_with_allow(
    client: FlaskClient, tenant: ApiTenant, method: str, path: str, allowed: set[str]
) -> None:
    response = client.open(path, method=method, headers=tenant.headers)
    assert_problem(response, 405, method)
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


def test_unknown_route_is_404_problem(client: FlaskClient) -> None:
    assert_problem(client.get("/v1/nothing-here"), 404)
