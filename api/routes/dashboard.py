"""`/`: the dashboard page. Its script and styles are the app's static files (`api/static/`).

The page holds no data and needs no key to load: it signs in with an API key in the browser
(kept in sessionStorage) and then reads and writes through the `/v1` JSON API like any client.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app

bp = Blueprint("dashboard", __name__)

PAGE = "dashboard.html"


@bp.get("/")
def dashboard() -> Response:
    response = current_app.send_static_file(PAGE)
    response.headers["Cache-Control"] = "no-cache"
    return response
