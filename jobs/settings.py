"""Deployment settings, read once per process from the environment at the edge.

`Settings.from_env()` is called by entry points only (create_app, the worker, migrations/env.py,
the CLI) and the resulting object is passed down. Nothing else reads os.environ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from jobs.windows import completion_window
from s4c_engine.config import DEFAULT_MODEL_NAME


def _default_home(environ: Mapping[str, str]) -> Path:
    if environ.get("S4C_HOME"):
        return Path(environ["S4C_HOME"]).expanduser()
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "s4c"


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _window(environ: Mapping[str, str], name: str) -> str | None:
    raw = environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        completion_window(raw)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc
    return raw


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    broker_url: str | None  # None: the embedded launcher starts a Redis and fills it in
    model_name: str = DEFAULT_MODEL_NAME
    model_dir: Path | None = None  # None: $S4C_HOME/models/<default model>
    heads_path: Path | None = None  # None: the heads shipped for the default model, if any
    # s4c's answer datastore (a second lookup chain from the model's own distilled answers,
    # docs/training-heads.md); None: no datastore
    datastore_path: Path | None = None
    engine_method: str = "s4c"  # s4c | medusa | ar
    device: str = "cpu"
    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    # limits
    max_requests_per_job: int = 50_000
    max_body_bytes: int = 200 * 1024 * 1024
    max_tokens_limit: int = 4096
    rate_limit_per_minute: int = 600
    # work split and leases
    chunk_size: int = 16
    lease_seconds: int = 120
    max_attempts: int = 3
    sweep_interval_seconds: int = 15
    max_batch_size: int = 16
    baseline_sample: float = 0.05
    baseline_min_count: int = 2
    # a job's completion window when it names none ('24h'; None: jobs without one never expire)
    completion_window: str | None = None
    # Redis redelivers a message unacked for this long; keep it well above the longest chunk.
    visibility_timeout_seconds: int = 3600
    # Prometheus endpoint of each worker process (0 = off); one port per process on a host.
    worker_metrics_port: int = 0
    # torch's intra-op (OpenMP) threads in each worker process; 0 = torch's default, one per
    # core. `s4c serve` sets it so its workers do not oversubscribe the cores (s4c/launcher.py).
    torch_threads: int = 0
    # Set (by `s4c api --processes N`, or by hand) when several API processes share one port:
    # prometheus_client then keeps request metrics in files here and /metrics sums them.
    metrics_multiprocess_dir: Path | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = _default_home(env)
        database_url = env.get("S4C_DATABASE_URL") or f"sqlite:///{home / 's4c.sqlite'}"
        model_dir = env.get("S4C_MODEL_DIR")
        heads_path = env.get("S4C_HEADS")
        datastore = env.get("S4C_DATASTORE", "").strip()
        return cls(
            home=home,
            database_url=database_url,
            broker_url=env.get("S4C_BROKER_URL") or None,
            model_name=env.get("S4C_MODEL_NAME", DEFAULT_MODEL_NAME),
            model_dir=Path(model_dir).expanduser() if model_dir else None,
            heads_path=Path(heads_path).expanduser() if heads_path else None,
            datastore_path=Path(datastore).expanduser() if datastore else None,
            engine_method=env.get("S4C_ENGINE_METHOD", "s4c"),
            device=env.get("S4C_DEVICE", "cpu"),
            api_url=env.get("S4C_API_URL", "http://127.0.0.1:8000"),
            api_key=env.get("S4C_API_KEY") or None,
            max_requests_per_job=_int(env, "S4C_MAX_REQUESTS_PER_JOB", 50_000),
            max_body_bytes=_int(env, "S4C_MAX_BODY_BYTES", 200 * 1024 * 1024),
            max_tokens_limit=_int(env, "S4C_MAX_TOKENS_LIMIT", 4096),
            rate_limit_per_minute=_int(env, "S4C_RATE_LIMIT_PER_MINUTE", 600),
            chunk_size=_int(env, "S4C_CHUNK_SIZE", 16),
            lease_seconds=_int(env, "S4C_LEASE_SECONDS", 120),
            max_attempts=_int(env, "S4C_MAX_ATTEMPTS", 3),
            sweep_interval_seconds=_int(env, "S4C_SWEEP_INTERVAL_SECONDS", 15),
            max_batch_size=_int(env, "S4C_MAX_BATCH_SIZE", 16),
            baseline_sample=_float(env, "S4C_BASELINE_SAMPLE", 0.05),
            baseline_min_count=_int(env, "S4C_BASELINE_MIN_COUNT", 2),
            completion_window=_window(env, "S4C_COMPLETION_WINDOW"),
            visibility_timeout_seconds=_int(env, "S4C_VISIBILITY_TIMEOUT_SECONDS", 3600),
            worker_metrics_port=_int(env, "S4C_WORKER_METRICS_PORT", 0),
            torch_threads=_int(env, "S4C_TORCH_THREADS", 0),
            metrics_multiprocess_dir=(
                Path(env["PROMETHEUS_MULTIPROC_DIR"])
                if env.get("PROMETHEUS_MULTIPROC_DIR")
                else None
            ),
        )

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir or self.home / "models" / self.model_name

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]
