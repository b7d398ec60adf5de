"""The examples in docs/api.md run as written against a live API, and every curl names a
route and method of the served OpenAPI document."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import requests

from tests.s4c.support import LiveApi

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)


def runnable_blocks() -> list[str]:
    """Every sh block but the setup one that exports the variables the test provides."""
    blocks = SH_BLOCK.findall(API_DOC.read_text())
    return [block for block in blocks if not block.lstrip().startswith("export ")]


def curl_routes(script: str) -> list[tuple[str, str]]:
    """(method, OpenAPI path) of every curl command in the script."""
    commands = re.split(r"\n(?=\S)", script.replace("\\\n", " "))
    routes = []
    for command in commands:
        if not command.startswith("curl"):
            continue
        url = re.search(r'"\$S4C_API_URL(/[^"?]*)', command)
        assert url, command
        method = re.search(r"-X (\w+)", command)
        verb = method.group(1) if method else ("POST" if " -F " in command else "GET")
        routes.append((verb.lower(), url.group(1).replace("$JOB", "{job_id}")))
    return routes


def test_every_curl_in_the_api_doc_is_a_documented_route(live_api: LiveApi) -> None:
    document = requests.get(f"{live_api.url}/openapi.json", timeout=10).json()
    routes = curl_routes("\n".join(runnable_blocks()))
    assert len(routes) >= 10
    for method, path in routes:
        assert path in document["paths"], path
        assert method in document["paths"][path], (method, path)


def test_the_api_doc_examples_run_as_written(
    live_api: LiveApi, api_key: str, tmp_path: Path
) -> None:
    script = "set -euo pipefail\n" + "\n".join(runnable_blocks())
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "S4C_API_URL": live_api.url, "S4C_API_KEY": api_key},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"job_[0-9a-f]+\n", result.stdout), result.stdout  # echo "$JOB"
    assert '"status":"ok"' in result.stdout.replace(" ", "")  # /healthz
    assert "application/problem+json" not in result.stdout  # bodies only, no headers
    assert "duplicate" in result.stdout.lower() or '"x"' in result.stdout
