"""Load test of the HTTP API: concurrent job submits and status polls over loopback.

Starts `s4c api` (gunicorn) as a separate process on a fresh database (SQLite by default, or a
fresh PostgreSQL database with --postgres-server) and a private Redis, unless --api-url and
--api-key name a running API. Then this process runs --concurrency client threads, each
submitting a small inline job and polling it --polls-per-submit times, until --duration
seconds or --max-requests requests have passed, whichever comes first. No worker is needed:
the jobs stay queued, and what is measured is the API's own latency.

Prints one JSON report (requests/s, p50/p99 latency per kind, status counts, 5xx count) and
exits 1 if any response was a 5xx or a request failed to get an answer at all.

    .venv/bin/python benchmarks/load_test.py --duration 60 --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs import migrate, store  # noqa: E402  (after the repository is importable)
from jobs.db import create_db_engine, session_factory, transaction  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from s4c.embedded import RedisServer, create_database, drop_database, find_free_port  # noqa: E402

READY_TIMEOUT_SECONDS = 120.0
REQUEST_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Sample:
    """One HTTP exchange: which kind, its status (0: no answer) and its latency."""

    kind: str
    status: int
    seconds: float


@dataclass(frozen=True)
class KindReport:
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]


@dataclass(frozen=True)
class LoadReport:
    api_url: str
    database: str
    concurrency: int
    duration_seconds: float
    requests: int
    requests_per_second: float
    server_errors: int
    no_answer: int
    by_kind: dict[str, KindReport]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, round(fraction * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(
    samples: list[Sample], *, api_url: str, database: str, concurrency: int, seconds: float
) -> LoadReport:
    by_kind = {}
    for kind in sorted({s.kind for s in samples}):
        mine = [s for s in samples if s.kind == kind]
        latencies = sorted(s.seconds * 1000 for s in mine)
        by_kind[kind] = KindReport(
            count=len(mine),
            p50_ms=round(percentile(latencies, 0.50), 1),
            p99_ms=round(percentile(latencies, 0.99), 1),
            max_ms=round(latencies[-1], 1),
            statuses={str(k): v for k, v in sorted(Counter(s.status for s in mine).items())},
        )
    return LoadReport(
        api_url=api_url,
        database=database,
        concurrency=concurrency,
        duration_seconds=round(seconds, 2),
        requests=len(samples),
        requests_per_second=round(len(samples) / seconds, 1) if seconds > 0 else 0.0,
        server_errors=sum(s.status >= 500 for s in samples),
        no_answer=sum(s.status == 0 for s in samples),
        by_kind=by_kind,
    )


def job_body(prompts: int) -> dict[str, object]:
    requests_ = [
        {"custom_id": f"r{i}", "prompt": f"Write one line about the number {i}.", "max_tokens": 16}
        for i in range(prompts)
    ]
    return {"requests": requests_, "metadata": {"source": "load-test"}}


class LoadRun:
    """Client threads sharing a deadline and a request budget; samples collected in order."""

    def __init__(self, api_url: str, key: str, args: argparse.Namespace) -> None:
        self.api_url = api_url
        self.headers = {"Authorization": f"Bearer {key}"}
        self.args = args
        self.samples: list[Sample] = []
        self.lock = threading.Lock()
        self.issued = 0
        self.deadline = 0.0

    def _take_budget(self) -> bool:
        """Reserve one request: False once the deadline or --max-requests is reached."""
        with self.lock:
            if time.monotonic() >= self.deadline or self.issued >= self.args.max_requests:
                return False
            self.issued += 1
            return True

    def _timed(
        self, http: requests.Session, kind: str, method: str, path: str, body: object = None
    ) -> requests.Response | None:
        started = time.perf_counter()
        try:
            response: requests.Response | None = http.request(
                method,
                self.api_url + path,
                headers=self.headers,
                json=body,
                timeout=REQUEST_TIMEOUT_SECONDS,
            )
        except requests.RequestException:
            response = None
        status = 0 if response is None else response.status_code
        with self.lock:
            self.samples.append(Sample(kind, status, time.perf_counter() - started))
        return response

    def _client(self) -> None:
        body = job_body(self.args.prompts_per_job)
        with requests.Session() as http:
            while self._take_budget():
                submitted = self._timed(http, "submit", "POST", "/v1/jobs", body)
                if submitted is None or submitted.status_code != 201:
                    continue
                job_id = submitted.json()["id"]
                for _ in range(self.args.polls_per_submit):
                    if not self._take_budget():
                        return
                    self._timed(http, "poll", "GET", f"/v1/jobs/{job_id}")

    def run(self) -> float:
        threads = [threading.Thread(target=self._client) for _ in range(self.args.concurrency)]
        started = time.monotonic()
        self.deadline = started + self.args.duration
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.monotonic() - started


def create_key(database_url: str) -> str:
    db = create_db_engine(database_url)
    try:
        with transaction(session_factory(db)) as session:
            _, key = store.create_api_key(session, f"load-{uuid.uuid4().hex[:8]}")
            return key
    finally:
        db.dispose()


@contextmanager
def started_api(args: argparse.Namespace, workdir: Path) -> Iterator[tuple[str, str, str]]:
    """Start broker, database and `s4c api`; yield (api_url, key, database kind); stop all."""
    with ExitStack() as stack:
        if args.broker_url:
            broker_url = args.broker_url
        else:
            redis = RedisServer.start(workdir / "redis")
            stack.callback(redis.stop)
            broker_url = redis.url(0)
        if args.postgres_server:
            name = f"s4c_load_{uuid.uuid4().hex[:8]}"
            database_url = create_database(args.postgres_server, name)
            stack.callback(drop_database, args.postgres_server, name)
            kind = "postgresql"
        else:
            database_url = f"sqlite:///{workdir / 'load.sqlite'}"
            kind = "sqlite"
        settings = Settings.from_env().with_overrides(database_url=database_url)
        migrate.upgrade(settings)
        port = find_free_port()
        env = {
            **os.environ,
            "S4C_DATABASE_URL": database_url,
            "S4C_BROKER_URL": broker_url,
            "S4C_MODEL_DIR": str(settings.resolved_model_dir),
            "S4C_RATE_LIMIT_PER_MINUTE": str(10**9),
            "PYTHONUNBUFFERED": "1",
        }
        log_path = workdir / "api.log"
        with log_path.open("wb") as log:
            command = [sys.executable, "-m", "s4c", "api", "--host", "127.0.0.1"]
            command += ["--port", str(port), "--processes", str(args.api_processes)]
            command += ["--threads", str(args.api_threads)]
            api = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)

        def stop_api() -> None:
            api.terminate()
            try:
                api.wait(30)
            except subprocess.TimeoutExpired:
                api.kill()
                api.wait(10)

        stack.callback(stop_api)
        api_url = f"http://127.0.0.1:{port}"
        wait_ready(api_url, api, log_path)
        yield api_url, create_key(database_url), kind


def wait_ready(api_url: str, api: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise SystemExit(f"the API exited early:\n{log_path.read_text(errors='replace')}")
        try:
            if requests.get(f"{api_url}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the API was not ready after {READY_TIMEOUT_SECONDS:.0f} s; see {log_path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--max-requests", type=int, default=200_000, help="stop after this many")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument("--polls-per-submit", type=int, default=4)
    parser.add_argument("--prompts-per-job", type=int, default=4)
    parser.add_argument("--api-url", help="a running API (then --api-key is needed)")
    parser.add_argument("--api-key")
    parser.add_argument("--postgres-server", help="PostgreSQL server URL: use a fresh database")
    parser.add_argument("--broker-url", help="Redis URL for the started API (default: private)")
    parser.add_argument("--api-processes", type=int, default=1)
    parser.add_argument("--api-threads", type=int, default=8)
    parser.add_argument("--output", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    if args.api_url and not args.api_key:
        parser.error("--api-url needs --api-key")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="s4c-load-"))
    workdir.chmod(0o755)
    try:
        with ExitStack() as stack:
            if args.api_url:
                api_url, key, database = args.api_url.rstrip("/"), args.api_key, "external"
            else:
                api_url, key, database = stack.enter_context(started_api(args, workdir))
            run = LoadRun(api_url, key, args)
            seconds = run.run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = summarize(
        run.samples,
        api_url=api_url,
        database=database,
        concurrency=args.concurrency,
        seconds=seconds,
    )
    text = json.dumps(asdict(report), indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 1 if report.server_errors or report.no_answer else 0


if __name__ == "__main__":
    raise SystemExit(main())
