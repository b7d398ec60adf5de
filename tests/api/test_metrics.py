"""`/metrics`: request counters and latencies move with traffic, jobs by status and the queue
depth come from the database and Redis, and a scrape survives an unreachable Redis."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from tests.api.support import ApiTenant, inline_job

Sample = tuple[str, tuple[tuple[str, str], ...]]


def scrape(client: FlaskClient) -> dict[Sample, float]:
    """Every sample of one `/metrics` scrape, keyed by (name, sorted labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def jobs_total(samples: dict[Sample, float]) -> float:
    return sum(v for (name, _labels), v in samples.items() if name == "s4c_jobs")


def test_a_submit_moves_the_request_job_and_queue_metrics(
    client: FlaskClient, tenant: ApiTenant
) -> None:
    before = scrape(client)
    queue = next(dict(labels)["queue"] for name, labels in before if name == "s4c_queue_depth")
    created = client.post("/v1/jobs", json=inline_job(3), headers=tenant.headers)
    assert created.status_code == 201
    job_id = created.get_json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=tenant.headers).status_code == 200
    after = scrape(client)

    submit = {"route": "/v1/jobs", "method": "POST", "status": "201"}
    assert value(after, "s4c_api_requests_total", **submit) == (
        value(before, "s4c_api_requests_total", **submit) + 1
    )
    # the job id is not a label value: reads are counted under the route template
    read = {"route": "/v1/jobs/<job_id>", "method": "GET", "status": "200"}
    assert value(after, "s4c_api_requests_total", **read) >= 1
    timed = {"route": "/v1/jobs", "method": "POST"}
    count = "s4c_api_request_duration_seconds_count"
    assert value(after, count, **timed) == value(before, count, **timed) + 1
    assert value(after, "s4c_api_request_duration_seconds_sum", **timed) > value(
        before, "s4c_api_request_duration_seconds_sum", **timed
    )
    assert jobs_total(after) == jobs_total(before) + 1
    # 3 requests in chunks of 4: one chunk message waits in the model's queue (no worker here)
    assert value(after, "s4c_queue_depth", queue=queue) == (
        value(before, "s4c_queue_depth", queue=queue) + 1
    )
    assert value(after, "s4c_metrics_backend_up", backend="database") == 1.0
    assert value(after, "s4c_metrics_backend_up", backend="redis") == 1.0
    assert {dict(labels)["status"] for name, labels in after if name == "s4c_jobs"} >= {
        "validating",
        "in_progress",
        "completed",
        "cancelled",
    }


def test_errors_are_counted_by_status_and_unknown_paths_share_one_label(
    client: FlaskClient,
) -> None:
    before = scrape(client)
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/no/such/path/abc123").status_code == 404
    after = scrape(client)
    denied = {"route": "/v1/jobs", "method": "GET", "status": "401"}
    unmatched = {"route": "<unmatched>", "method": "GET", "status": "404"}
    for labels in (denied, unmatched):
        assert value(after, "s4c_api_requests_total", **labels) == (
            value(before, "s4c_api_requests_total", **labels) + 1
        )
    assert not any("abc123" in str(labels) for _name, labels in after)


def test_a_scrape_survives_an_unreachable_redis(fresh_app: Callable[..., Flask]) -> None:
    app = fresh_app(broker_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    samples = scrape(app.test_client())
    assert value(samples, "s4c_metrics_backend_up", backend="redis") == 0.0
    assert value(samples, "s4c_metrics_backend_up", backend="database") == 1.0
    assert not any(name == "s4c_queue_depth" for name, _labels in samples)
    assert any(name == "s4c_jobs" for name, _labels in samples)
