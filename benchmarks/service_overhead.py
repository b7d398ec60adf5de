"""Service overhead and scale-out: the same prompts through API + Redis + worker + database vs
a direct `Engine.generate`, and job throughput with 1 and 2 worker processes.

1. Direct: `Engine.load(model, max_batch_size=B)` in this process; the prompts run in the
   groups of B that the service's chunks form (chunk size = B), one `generate` per group.
   engine wall = the sum of those calls (after one warm-up call).
2. Service: `s4c serve`'s stack (`ServiceStack`: private Redis, a fresh SQLite database or
   PostgreSQL with --postgres-server, `s4c api`, N `s4c worker`s), a warm-up job, then the
   same prompts as one job over HTTP. job wall = from POST /v1/jobs until GET shows the job
   completed (polled every 50 ms). overhead = (job wall - engine wall) / engine wall, with
   1 worker; also against the engine time the worker itself measured in that job (less
   exposed to a busy machine's noise between runs). Throughput X(N) = generated tokens /
   job wall; efficiency E(2) = X(2) / (2 X(1)).
Greedy, no baseline re-runs (they would add engine work the direct call does not do). With N
workers each gets cpu_count / N torch threads (OMP_NUM_THREADS).

    .venv/bin/python benchmarks/service_overhead.py --max-tokens 32
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs import store  # noqa: E402  (after the repository is importable)
from jobs.db import create_db_engine, session_factory, transaction  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from s4c.embedded import create_database, drop_database  # noqa: E402
from s4c.launcher import ServiceStack  # noqa: E402
from s4c_engine.bench.prompts import default_prompts_path, read_bench_prompts  # noqa: E402

POLL_SECONDS = 0.05
JOB_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True)
class DirectRun:
    method: str
    seconds: float
    tokens: int


@dataclass(frozen=True)
class JobRun:
    workers: int
    threads_per_worker: int
    seconds: float
    tokens: int
    worker_generation_seconds: float
    tokens_per_second: float


@dataclass(frozen=True)
class OverheadReport:
    model_dir: str
    database: str
    prompts: int
    batch_size: int
    max_tokens: int
    direct: DirectRun
    jobs: list[JobRun]
    overhead: float
    overhead_vs_worker_engine: float
    efficiency_2: float | None


def load_prompts(path: Path, count: int) -> list[str]:
    """The first turns of the file's first `count` prompts (Spec-Bench: MT-bench questions,
    short prompts, so the generation rather than the prefill dominates the wall time)."""
    prompts = read_bench_prompts(path)[:count]
    if len(prompts) < count:
        raise SystemExit(f"{path} holds only {len(prompts)} prompts")
    return [p.turns[0] for p in prompts]


def run_direct(
    model_dir: Path,
    method: str,
    texts: Sequence[str],
    batch: int,
    max_tokens: int,
    threads: int | None,
) -> DirectRun:
    """The engine alone, in chunk-sized groups, as the worker would run them."""
    import torch

    from s4c_engine.config import Prompt, SamplingParams
    from s4c_engine.engine import Engine

    torch.set_num_threads(threads_per_worker(1, threads))  # what one worker gets
    engine = Engine.load(model_dir, method=method, max_batch_size=batch)  # type: ignore[arg-type]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    prompts = [Prompt(text=t) for t in texts]
    engine.generate(prompts[:batch], [params] * batch)  # warm-up
    tokens, seconds = 0, 0.0
    for start in range(0, len(prompts), batch):
        group = prompts[start : start + batch]
        started = time.perf_counter()
        results = engine.generate(group, [params] * len(group))
        seconds += time.perf_counter() - started
        tokens += sum(len(r.token_ids) for r in results)
    return DirectRun(engine.method, seconds, tokens)


def job_body(texts: Sequence[str], max_tokens: int) -> dict[str, object]:
    requests_ = [
        {"custom_id": f"p{i}", "prompt": text, "max_tokens": max_tokens, "temperature": 0}
        for i, text in enumerate(texts)
    ]
    return {"requests": requests_, "baseline_sample": 0}


def run_job(
    api_url: str, key: str, texts: Sequence[str], max_tokens: int
) -> tuple[float, dict[str, Any]]:
    """Submit one job and wait for it: (wall seconds from submit to completed, job object)."""
    headers = {"Authorization": f"Bearer {key}"}
    with requests.Session() as http:
        started = time.perf_counter()
        response = http.post(
            f"{api_url}/v1/jobs", json=job_body(texts, max_tokens), headers=headers, timeout=60
        )
        response.raise_for_status()
        job_id = response.json()["id"]
        deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            job = http.get(f"{api_url}/v1/jobs/{job_id}", headers=headers, timeout=60).json()
            if job["status"] in ("completed", "failed", "cancelled", "expired"):
                seconds = time.perf_counter() - started
                if job["status"] != "completed" or job["request_counts"]["failed"]:
                    raise SystemExit(f"job {job_id} ended {job['status']}: {job}")
                return seconds, job
            time.sleep(POLL_SECONDS)
    raise SystemExit(f"job {job_id} did not finish in {JOB_TIMEOUT_SECONDS:.0f} s")


def threads_per_worker(workers: int, fixed: int | None = None) -> int:
    return fixed or max(1, (os.cpu_count() or 1) // workers)


def run_service(args: argparse.Namespace, texts: Sequence[str], workers: int, home: Path) -> JobRun:
    """Start the stack with `workers` workers, run a warm-up job and the measured one."""
    database_name = None
    if args.postgres_server:
        database_name = f"s4c_overhead_{uuid.uuid4().hex[:8]}"
        database_url = create_database(args.postgres_server, database_name)
    else:
        database_url = f"sqlite:///{home / f'overhead-{workers}.sqlite'}"
    settings = Settings.from_env().with_overrides(
        home=home, database_url=database_url, broker_url=None
    )
    environ = {
        **os.environ,
        "S4C_MODEL_DIR": str(args.model_dir),
        "S4C_CHUNK_SIZE": str(args.batch_size),
        "S4C_MAX_BATCH_SIZE": str(args.batch_size),
        "S4C_BASELINE_SAMPLE": "0",
        "S4C_RATE_LIMIT_PER_MINUTE": "100000",
        "S4C_ENGINE_METHOD": args.method,
        # The machine's cores split between the workers, as one worker per device would be.
        "OMP_NUM_THREADS": str(threads_per_worker(workers, args.threads)),
    }
    stack = ServiceStack.start(settings, workers=workers, device="cpu", environ=environ)
    try:
        db = create_db_engine(database_url)
        with transaction(session_factory(db)) as session:
            _, key = store.create_api_key(session, "overhead")
        db.dispose()
        api_url = stack.settings.api_url
        run_job(api_url, key, texts[: args.batch_size * workers], args.max_tokens)  # warm-up
        seconds, job = run_job(api_url, key, texts, args.max_tokens)
    finally:
        stack.stop()
        if database_name is not None:
            drop_database(args.postgres_server, database_name)
    stats = job["stats"]
    tokens = int(stats["tokens_generated"])
    return JobRun(
        workers=workers,
        threads_per_worker=threads_per_worker(workers, args.threads),
        seconds=round(seconds, 3),
        tokens=tokens,
        worker_generation_seconds=round(float(stats["generation_seconds"]), 3),
        tokens_per_second=round(tokens / seconds, 2),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Settings.from_env().resolved_model_dir)
    parser.add_argument("--method", default="s4c", help="engine method on both sides")
    parser.add_argument("--prompts-file", type=Path, default=default_prompts_path(REPO))
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8, help="chunk size = batch size")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--workers", default="1,2", help="worker counts to measure")
    parser.add_argument(
        "--threads", type=int, help="torch threads per worker (default: cores / workers)"
    )
    parser.add_argument("--postgres-server", help="PostgreSQL server URL (default: SQLite)")
    parser.add_argument("--output", type=Path, help="also write the JSON report here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    texts = load_prompts(args.prompts_file, args.prompts)
    direct = run_direct(
        args.model_dir, args.method, texts, args.batch_size, args.max_tokens, args.threads
    )
    print(f"direct: {direct}", file=sys.stderr)
    home = Path(tempfile.mkdtemp(prefix="s4c-overhead-"))
    home.chmod(0o755)
    runs = []
    try:
        for workers in (int(n) for n in args.workers.split(",")):
            runs.append(run_service(args, texts, workers, home))
            print(f"service: {runs[-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    one = next((r for r in runs if r.workers == 1), None)
    two = next((r for r in runs if r.workers == 2), None)
    report = OverheadReport(
        model_dir=str(args.model_dir),
        database="postgresql" if args.postgres_server else "sqlite",
        prompts=len(texts),
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        direct=direct,
        jobs=runs,
        overhead=round((one.seconds - direct.seconds) / direct.seconds, 4) if one else float("nan"),
        # The same split inside the service run: engine time as the worker measured it.
        overhead_vs_worker_engine=(
            round((one.seconds - one.worker_generation_seconds) / one.worker_generation_seconds, 4)
            if one
            else float("nan")
        ),
        efficiency_2=(
            round(two.tokens_per_second / (2 * one.tokens_per_second), 3) if one and two else None
        ),
    )
    text = json.dumps(asdict(report), indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
