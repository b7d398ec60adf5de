"""The OpenAPI document matches the app: same routes and methods, resolvable references,
documented status codes for what the routes answer, and the deployment's limits."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.api.support import ApiTenant, inline_job, services_of


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    body = response.get_json()
    assert body["openapi"] == "3.1.0"
    return dict(body)


def test_document_lists_exactly_the_apps_routes(app: Flask, document: dict[str, Any]) -> None:
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        served |= {(path, m.lower()) for m in rule.methods or () if m not in ("HEAD", "OPTIONS")}
    documented = {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert served == documented


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                target: Any = document
                for part in ref.removeprefix("#/").split("/"):
                    target = target[part]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)


def test_security_and_problem_schema(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An s4c_... API key.",
    }
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "instance"}
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert document["paths"][path]["get"]["security"] == []


def test_limits_come_from_settings(app: Flask, document: dict[str, Any]) -> None:
    settings = services_of(app).settings
    schemas = document["components"]["schemas"]
    for variant in schemas["RequestIn"]["oneOf"]:
        branches = variant["properties"]["max_tokens"]["anyOf"]
        assert {"type": "integer", "minimum": 1, "maximum": settings.max_tokens_limit} in branches
        assert variant["additionalProperties"] is False
    assert schemas["JobIn"]["properties"]["requests"]["maxItems"] == settings.max_requests_per_job


def _operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    for template, item in document["paths"].items():
        pattern = re.sub(r"\\{\w+\\}", r"[^/]+", re.escape(template))
        if re.fullmatch(pattern, path) and method.lower() in item:
            return dict(item[method.lower()])
    raise AssertionError(f"{method} {path} is not documented")


def test_answered_statuses_are_documented(
    client: FlaskClient, tenant: ApiTenant, other_tenant: ApiTenant, document: dict[str, Any]
) -> None:
    auth = tenant.headers
    job = client.post("/v1/jobs", json=inline_job(1), headers=auth).get_json()["id"]
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/jobs", {"json": inline_job(1), "headers": auth}),
        ("POST", "/v1/jobs", {"data": b"{", "content_type": "application/json", "headers": auth}),
        ("POST", "/v1/jobs", {"data": b"x", "content_type": "text/csv", "headers": auth}),
        ("POST", "/v1/jobs", {"json": {"requests": []}, "headers": auth}),
        ("POST", "/v1/jobs", {"json": inline_job(1)}),
        ("GET", "/v1/jobs", {"headers": auth}),
        ("GET", "/v1/jobs?limit=0", {"headers": auth}),
        ("GET", "/v1/jobs?after=job_1", {"headers": auth}),
        ("GET", "/v1/jobs", {}),
    ]
    for suffix in ("", "/results", "/results.jsonl", "/cancel"):
        method = "POST" if suffix == "/cancel" else "GET"
        calls += [
            (method, f"/v1/jobs/{job}{suffix}", {"headers": auth}),
            (method, f"/v1/jobs/{job}{suffix}", {"headers": other_tenant.headers}),
            (method, f"/v1/jobs/{job}{suffix}", {}),
        ]
    calls += [("GET", f"/v1/jobs/{job}/results?limit=abc", {"headers": auth})]
    calls += [("GET", p, {}) for p in ("/healthz", "/readyz", "/openapi.json", "/docs")]
    for method, path, kwargs in calls:
        response = client.open(path, method=method, **kwargs)
        responses = _operation(document, method, path.split("?")[0])["responses"]
        assert str(response.status_code) in responses, (method, path, response.status_code)
        content = responses[str(response.status_code)]
        if "$ref" in content:
            name = content["$ref"].rsplit("/", 1)[-1]
            content = document["components"]["responses"][name]
        assert response.mimetype in content["content"], (method, path, response.mimetype)
