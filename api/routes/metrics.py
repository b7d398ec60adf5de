"""`/metrics`: the API's Prometheus exposition (request counters, latencies, jobs, queue depth).

Unauthenticated like `/healthz`: it carries counts, never job contents or tenant names; keep
it on a network only the scraper reaches (see docs/metrics.md).
"""

from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.services import services

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    body = generate_latest(services().metrics.registry)
    return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})
