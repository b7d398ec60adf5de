"""`/openapi.json` (the document, built once per app) and `/docs` (a plain HTML index of it)."""

from __future__ import annotations

import html

from flask import Blueprint, Response, json

from api.openapi import build_openapi
from api.services import services

bp = Blueprint("docs", __name__)


@bp.get("/openapi.json")
def openapi_document() -> Response:
    return Response(json.dumps(build_openapi(services().settings)), mimetype="application/json")


@bp.get("/docs")
def docs_page() -> Response:
    document = build_openapi(services().settings)
    rows = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            codes = ", ".join(operation["responses"])
            rows.append(
                f"<tr><td><code>{method.upper()} {html.escape(path)}</code></td>"
                f"<td>{html.escape(operation['summary'])}</td><td>{codes}</td></tr>"
            )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>s4c API</title></head><body>"
        "<h1>s4c batch generation API</h1><p>Machine-readable document: "
        "<a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p>"
        "<table border='1' cellpadding='4'><tr><th>operation</th><th>what</th><th>statuses</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
    return Response(page, mimetype="text/html")
