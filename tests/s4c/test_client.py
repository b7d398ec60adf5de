"""The Python client against the real API over HTTP (and a scripted server for retries)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from s4c.client import (
    AuthenticationError,
    Client,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    ServiceUnreachableError,
)
from s4c.embedded import find_free_port
from tests.s4c.support import LiveApi, batch_line


def test_submit_inline_then_get_and_list_show_the_job(live_api: LiveApi, api_key: str) -> None:
    client = Client(live_api.url, api_key)
    job = client.submit(
        [
            {"custom_id": "a", "prompt": "Once upon a time", "max_tokens": 4},
            {"custom_id": "b", "messages": [{"role": "user", "content": "Hi"}]},
        ],
        metadata={"team": "tests"},
    )
    assert job.id.startswith("job_")
    assert job.request_counts.total == 2
    fetched = client.get_job(job.id)
    assert fetched.id == job.id
    assert fetched.metadata == {"team": "tests"}
    page = client.list_jobs(limit=10)
    assert [listed.id for listed in page.jobs] == [job.id]
    assert not page.has_more


def test_list_jobs_pages_newest_first(live_api: LiveApi, api_key: str) -> None:
    client = Client(live_api.url, api_key)
    ids = [client.submit([{"custom_id": "x", "prompt": f"p{i}"}]).id for i in range(3)]
    first = client.list_jobs(limit=2)
    assert [job.id for job in first.jobs] == ids[::-1][:2]
    assert first.has_more
    second = client.list_jobs(after=first.last_id, limit=2)
    assert [job.id for job in second.jobs] == [ids[0]]
    assert not second.has_more


def test_submit_jsonl_from_a_file_and_from_an_iterator(
    live_api: LiveApi, api_key: str, write_jsonl: Callable[[list[dict[str, object]]], Path]
) -> None:
    client = Client(live_api.url, api_key)
    lines = [batch_line("one", "Hello"), batch_line("two", "Bonjour")]
    from_file = client.submit_jsonl(write_jsonl(lines))
    from_iterator = client.submit_jsonl(iter(lines), metadata={"via": "multipart"})
    windowed = client.submit_jsonl(iter(lines), completion_window="2d")
    assert from_file.request_counts.total == 2
    assert from_iterator.request_counts.total == 2
    assert client.get_job(from_iterator.id).metadata == {"via": "multipart"}
    assert client.get_job(windowed.id).raw["completion_window"] == "2d"
    assert from_file.raw["completion_window"] is None


def test_the_same_idempotency_key_returns_the_same_job(live_api: LiveApi, api_key: str) -> None:
    client = Client(live_api.url, api_key)
    requests_ = [{"custom_id": "a", "prompt": "hi"}]
    first = client.submit(requests_, idempotency_key="same-key")
    again = client.submit(requests_, idempotency_key="same-key")
    assert again.id == first.id
    assert len(client.list_jobs().jobs) == 1


def test_a_wrong_key_raises_authentication_error_with_problem_details(live_api: LiveApi) -> None:
    with pytest.raises(AuthenticationError) as caught:
        Client(live_api.url, "s4c_not-a-key").list_jobs()
    assert caught.value.status == 401
    assert caught.value.problem.get("status") == 401


def test_another_tenants_job_is_not_found(live_api: LiveApi, api_key: str) -> None:
    job = Client(live_api.url, api_key).submit([{"custom_id": "a", "prompt": "hi"}])
    stranger = Client(live_api.url, live_api.new_key())
    with pytest.raises(NotFoundError) as caught:
        stranger.get_job(job.id)
    assert caught.value.status == 404


def test_a_rejected_job_raises_invalid_request_error_saying_why(
    live_api: LiveApi, api_key: str
) -> None:
    client = Client(live_api.url, api_key)
    with pytest.raises(InvalidRequestError) as caught:
        client.submit([{"custom_id": "dup", "prompt": "a"}, {"custom_id": "dup", "prompt": "b"}])
    assert 400 <= caught.value.status < 500
    assert "dup" in caught.value.detail
    assert client.list_jobs().jobs == []


def test_cancel_without_a_worker_ends_cancelled(live_api: LiveApi, api_key: str) -> None:
    client = Client(live_api.url, api_key)
    job = client.submit([{"custom_id": "a", "prompt": "hi"}])
    cancelled = client.cancel(job.id)
    assert cancelled.status in ("cancelling", "cancelled")
    seen: list[str] = []
    final = client.wait(
        job.id, poll_seconds=0.1, timeout=30, on_progress=lambda j: seen.append(j.status)
    )
    assert final.status == "cancelled"
    assert seen[-1] == "cancelled"
    assert [result.status for result in client.iter_results(job.id)] in ([], ["cancelled"])


class _ScriptedHandler(BaseHTTPRequestHandler):
    """Answers each request with the next (status, body) of the server's script."""

    def do_GET(self) -> None:
        server: _ScriptedServer = self.server  # type: ignore[assignment]
        status, body = server.script.pop(0)
        server.seen += 1
        self.send_response(status)
        self.send_header(
            "Content-Type", "application/problem+json" if status >= 400 else "application/json"
        )
        self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


class _ScriptedServer(ThreadingHTTPServer):
    script: list[tuple[int, str]]
    seen: int = 0


@pytest.fixture
def scripted_server() -> Iterator[_ScriptedServer]:
    server = _ScriptedServer(("127.0.0.1", 0), _ScriptedHandler)
    server.script = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


JOB_BODY = (
    '{"id": "job_1", "object": "job", "status": "in_progress", "model": "m", "created_at": 1,'
    ' "request_counts": {"total": 1, "completed": 0, "failed": 0, "cancelled": 0}}'
)
BUSY = '{"type": "about:blank", "title": "Too Many Requests", "status": 429, "detail": "slow down"}'


def test_429_and_503_are_retried_until_success(scripted_server: _ScriptedServer) -> None:
    scripted_server.script = [(429, BUSY), (503, '{"title": "Unavailable"}'), (200, JOB_BODY)]
    url = f"http://127.0.0.1:{scripted_server.server_address[1]}"
    job = Client(url, "k", backoff_seconds=0.01).get_job("job_1")
    assert job.status == "in_progress"
    assert scripted_server.seen == 3


def test_429_after_all_retries_raises_rate_limited_with_the_problem(
    scripted_server: _ScriptedServer,
) -> None:
    scripted_server.script = [(429, BUSY)] * 3
    url = f"http://127.0.0.1:{scripted_server.server_address[1]}"
    with pytest.raises(RateLimitedError) as caught:
        Client(url, "k", max_retries=2, backoff_seconds=0.01).get_job("job_1")
    assert caught.value.detail == "slow down"
    assert scripted_server.seen == 3


def test_nothing_listening_raises_service_unreachable() -> None:
    client = Client(
        f"http://127.0.0.1:{find_free_port()}", "k", max_retries=1, backoff_seconds=0.01
    )
    with pytest.raises(ServiceUnreachableError, match="cannot reach"):
        client.get_job("job_1")
