"""The load test (`benchmarks/load_test.py`) in miniature: it starts the API as its own
process, drives a few seconds of concurrent submits and polls, and sees no 5xx. Latency is
reported by the script, never asserted here (CI machines vary)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_load_script_runs_and_reports_no_server_errors(tmp_path: Path) -> None:
    report_path = tmp_path / "load.json"
    command = [sys.executable, "benchmarks/load_test.py", "--duration", "3"]
    command += ["--concurrency", "2", "--max-requests", "400", "--output", str(report_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["server_errors"] == 0 and report["no_answer"] == 0
    assert 0 < report["requests"] <= 400
    assert report["by_kind"]["submit"]["statuses"] == {"201": report["by_kind"]["submit"]["count"]}
    assert report["by_kind"]["poll"]["statuses"] == {"200": report["by_kind"]["poll"]["count"]}
    assert report["by_kind"]["poll"]["p99_ms"] >= report["by_kind"]["poll"]["p50_ms"] > 0
