"""The bundled demo job that `s4c serve --demo` (and `make run`) submits through the API.

`demo_job.jsonl` is an OpenAI Batch input file: a dozen varied requests (chat, code, maths,
translation, summarisation, an open question, stop strings, a seeded sampled request).
"""

from __future__ import annotations

from pathlib import Path

DEMO_JOB_PATH = Path(__file__).with_name("demo_job.jsonl")
