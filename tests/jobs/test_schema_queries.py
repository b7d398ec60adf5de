"""The README's example queries on the results database run on both backends and find what they
should."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session

from jobs import store
from jobs.models import ResultStatus
from jobs.types import BaselineRun, ChunkOutcome, RequestOutcome
from s4c_engine.config import RequestStats
from tests.jobs import factories

QUERIES_DOC = Path(__file__).resolve().parents[2] / "README.md"


def example_queries() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", QUERIES_DOC.read_text(), flags=re.S)


def _run_job(session: Session, category: str) -> str:
    owner = factories.tenant(session)
    job = factories.job(session, owner, 2, chunk_size=2, metadata={"category": category})
    claim = store.claim_chunk(session, store.chunk_ids(session, job.id)[0], "w", lease_seconds=60)
    assert claim is not None
    stats = RequestStats(prompt_tokens=3, completion_tokens=8, target_forwards=4, wall_seconds=0.5)
    outcomes = [
        RequestOutcome(r.input_index, r.custom_id, ResultStatus.SUCCEEDED, "x", "length", stats)
        for r in store.pending_requests(session, claim)
    ]
    baseline = BaselineRun(2, 16, 4.0, 16, 2.0, 2, 2, 1, 2)
    assert store.record_chunk_results(session, claim, ChunkOutcome(outcomes, 2.0, "s4c", baseline))
    return job.id


def test_the_doc_has_three_example_queries() -> None:
    assert len(example_queries()) == 3


def test_example_queries_run_and_answer(db_session: Session) -> None:
    # Other test packages may have committed rows in the shared database: look for ours.
    category = f"coding-{uuid.uuid4().hex[:6]}"
    job_id = _run_job(db_session, category)
    speedup, slowest, by_category = example_queries()
    if db_session.get_bind().dialect.name == "sqlite":
        slowest = slowest.replace(
            "CURRENT_TIMESTAMP - INTERVAL '1 day'", "datetime('now', '-1 day')"
        )
    rows = db_session.execute(text(speedup)).all()
    assert [(r.speedup, r.baseline_sample_size) for r in rows if r.id == job_id] == [(2.0, 2)]
    rows = [r for r in db_session.execute(text(slowest)).all() if r.job_id == job_id]
    assert {r.custom_id for r in rows} == {"req-0", "req-1"}
    assert rows[0].wall_seconds == 0.5 and rows[0].tau == 2.0
    rows = [r for r in db_session.execute(text(by_category)).all() if r.category == category]
    assert [(r.jobs, r.tokens, r.tau, r.tokens_per_second) for r in rows] == [(1, 16, 2.0, 8.0)]
