"""`/` serves the dashboard page and its assets from the app itself: no key needed to load
it, nothing fetched from another host, and every script and stylesheet it names is served."""

from __future__ import annotations

import re

from flask.testing import FlaskClient

ASSET = re.compile(r"""(?:src|href)="([^"]+)\"""")
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def test_the_page_and_every_asset_it_names_are_served_locally(client: FlaskClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assets = ASSET.findall(html)
    assert set(assets) == {"/static/dashboard.css", "/static/charts.js", "/static/dashboard.js"}
    for path in assets:
        asset = client.get(path)
        assert asset.status_code == 200, path
        text = asset.get_data(as_text=True)
        # no CDN, no font service: the only URL in the assets is the SVG namespace name
        assert set(re.findall(r"https?://[^\s\"'`)]+", text)) <= {SVG_NAMESPACE}, path
        asset.close()


def test_the_page_reads_data_only_through_the_authenticated_api(client: FlaskClient) -> None:
    script = client.get("/static/dashboard.js").get_data(as_text=True)
    assert "sessionStorage" in script and "localStorage" not in script
    assert "Authorization: `Bearer ${state.key}`" in script
    assert "innerHTML" not in script  # API text goes in through textContent only
    assert set(re.findall(r'"(/v1/[a-z]+)', script)) == {"/v1/jobs"}
