"""`s4c serve` as a user runs it: it comes up on embedded defaults, serves the API, and Ctrl-C
(or SIGTERM) stops everything it started and exits 0."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from jobs.settings import Settings
from s4c.embedded import find_free_port

READY_LINE = "serving; press Ctrl-C to stop"


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_comes_up_and_a_signal_stops_everything(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    port = find_free_port()
    env = {
        **os.environ,
        "S4C_HOME": str(tmp_path / "home"),
        "S4C_MODEL_DIR": str(Settings.from_env().resolved_model_dir),
        "S4C_API_URL": f"http://127.0.0.1:{port}",
    }
    for name in ("S4C_BROKER_URL", "S4C_DATABASE_URL"):
        env.pop(name, None)
    serve = subprocess.Popen(
        [sys.executable, "-m", "s4c", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started: list[psutil.Process] = []
    try:
        assert serve.stderr is not None
        lines = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = serve.stderr.readline()
            lines.append(line)
            if READY_LINE in line or not line:
                break
        assert READY_LINE in lines[-1], "".join(lines)
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        started = psutil.Process(serve.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in started)
        assert "redis-server" in names and "s4c api" in names and "s4c worker" in names

        serve.send_signal(stop_signal)
        assert serve.wait(120) == 0, serve.stderr.read()
        _gone, alive = psutil.wait_procs(started, timeout=30)
        assert alive == []
        assert (tmp_path / "home" / "s4c.sqlite").is_file()
    finally:
        if serve.poll() is None:
            serve.kill()
        for process in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
