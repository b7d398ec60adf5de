"""The whole service on the real default model: HTTP API -> Redis -> Celery worker -> SQL.

`ServiceStack` (what `s4c serve` runs) starts the API and a real worker process against a
private Redis and a fresh PostgreSQL database; a job goes in over HTTP through the client, and
its results and statistics come back. Greedy outputs must equal the engine's direct output.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobs.settings import Settings
from s4c.client import Client
from s4c.embedded import RedisServer, create_database, drop_database
from s4c.launcher import ServiceStack
from s4c_engine.config import ChatMessage, Prompt, SamplingParams
from tests.s4c.support import LiveApi

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

REQUESTS: list[dict[str, object]] = [
    {
        "custom_id": "capital",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16,
    },
    {"custom_id": "colors", "prompt": "The three primary colors are", "max_tokens": 12},
    {
        "custom_id": "list-with-stop",
        "messages": [{"role": "user", "content": "List three animals, one per line."}],
        "max_tokens": 24,
        "stop": ["3."],
    },
]


def engine_inputs(request: dict[str, object]) -> tuple[Prompt, SamplingParams]:
    messages = request.get("messages")
    if messages is not None:
        prompt = Prompt(messages=tuple(ChatMessage(**m) for m in messages))  # type: ignore[attr-defined]
    else:
        prompt = Prompt(text=str(request["prompt"]))
    params = SamplingParams(
        max_tokens=int(request["max_tokens"]),  # type: ignore[call-overload]
        stop=tuple(request.get("stop", ())),  # type: ignore[arg-type]
    )
    return prompt, params


@pytest.fixture
def service(
    redis_server_factory: Callable[[], RedisServer], pg_server_url: str, tmp_path: Path
) -> Iterator[ServiceStack]:
    model_dir = Settings.from_env().resolved_model_dir
    assert (model_dir / "config.json").is_file(), f"run `s4c model fetch` first ({model_dir})"
    redis = redis_server_factory()
    db_name = f"s4c_e2e_{uuid.uuid4().hex[:8]}"
    environ = {
        **os.environ,
        "S4C_HOME": str(tmp_path / "home"),
        "S4C_DATABASE_URL": create_database(pg_server_url, db_name),
        "S4C_BROKER_URL": redis.url(),
        "S4C_MODEL_DIR": str(model_dir),
        "S4C_CHUNK_SIZE": "2",
        "S4C_BASELINE_SAMPLE": "1.0",
    }
    settings = Settings.from_env(environ)
    stack = ServiceStack.start(settings, workers=1, device="cpu", environ=environ)
    try:
        yield stack
    finally:
        stack.stop()
        drop_database(pg_server_url, db_name)


def test_a_job_runs_through_the_whole_service_on_the_real_model(
    service: ServiceStack, tmp_path: Path
) -> None:
    live = LiveApi(service.settings.api_url, service.settings)
    client = Client(live.url, live.new_key("e2e"))
    job = client.submit(REQUESTS, metadata={"suite": "e2e"})
    progress: list[int] = []
    job = client.wait(
        job.id,
        poll_seconds=0.5,
        timeout=600,
        on_progress=lambda j: progress.append(j.request_counts.finished),
    )
    assert job.status == "completed", job.raw
    assert job.request_counts.completed == len(REQUESTS)
    assert progress == sorted(progress)

    # one result per request, in input order, paged one at a time
    results = list(client.iter_results(job.id, page_size=1))
    assert [r.custom_id for r in results] == [r["custom_id"] for r in REQUESTS]
    assert [r.index for r in results] == list(range(len(REQUESTS)))
    for result, request in zip(results, REQUESTS, strict=True):
        assert result.status == "succeeded", result.raw
        assert result.text
        assert 0 < result.usage["completion_tokens"] <= int(request["max_tokens"])  # type: ignore[call-overload]
        assert result.usage["prompt_tokens"] > 0
    assert "3." not in (results[2].text or "")

    # statistics add up
    stats = job.stats
    assert stats["tokens_generated"] == sum(r.usage["completion_tokens"] for r in results)
    assert stats["tokens_per_second"] > 0
    assert stats["method"] in ("s4c", "medusa", "ar")
    assert stats["tau"] >= 1.0
    baseline = stats["baseline"]
    if stats["method"] == "ar":
        # no draft heads: plain decoding has nothing to be compared with
        assert baseline["measured"] is False
    else:
        assert baseline["measured"] is True
        assert baseline["speedup"] > 0
        assert baseline["greedy_checked"] == baseline["greedy_matched"] > 0

    # the OpenAI-batch-shaped download carries the same texts
    out = tmp_path / "results.jsonl"
    assert client.download_results(job.id, out) == len(REQUESTS)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [r.custom_id for r in results]
    assert [line["response"]["body"]["choices"][0]["message"]["content"] for line in lines] == [
        r.text for r in results
    ]

    # greedy output equals the engine's own output for the same prompts
    from s4c_engine.engine import Engine

    engine = Engine.load(service.settings.resolved_model_dir, method="ar")
    prompts, params = zip(*(engine_inputs(r) for r in REQUESTS), strict=True)
    direct = engine.generate(list(prompts), list(params))
    assert [d.text for d in direct] == [r.text for r in results]
