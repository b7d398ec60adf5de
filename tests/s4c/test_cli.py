"""The `s4c` command line against a live API and real databases, run in-process."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from jobs.db import create_db_engine
from jobs.migrate import is_up_to_date
from s4c.cli import cli
from s4c.client import Client
from s4c.embedded import find_free_port
from tests.s4c.support import LiveApi, batch_line


def run(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, args, env=env or {}, catch_exceptions=True)


def api_env(live_api: LiveApi, key: str) -> dict[str, str]:
    return {"S4C_API_URL": live_api.url, "S4C_API_KEY": key}


def _command_paths(group: click.Group, prefix: list[str]) -> list[list[str]]:
    paths = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            paths.extend(_command_paths(command, [*prefix, name]))
        else:
            paths.append([*prefix, name])
    return paths


@pytest.mark.parametrize("path", _command_paths(cli, []), ids=lambda p: " ".join(p) or "s4c")
def test_every_command_has_help(path: list[str]) -> None:
    result = run([*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_db_upgrade_migrates_a_fresh_sqlite_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 's4c.sqlite'}"
    result = run(["db", "upgrade"], {"S4C_DATABASE_URL": url, "S4C_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    engine = create_db_engine(url)
    assert is_up_to_date(engine)
    engine.dispose()


def test_keys_create_prints_only_a_working_key(live_api: LiveApi) -> None:
    env = {"S4C_DATABASE_URL": live_api.settings.database_url}
    result = CliRunner().invoke(cli, ["keys", "create", "--tenant", "cli-tenant"], env=env)
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert result.stdout == key + "\n"
    assert key.startswith("s4c_")
    assert Client(live_api.url, key).list_jobs().jobs is not None


def test_keys_create_on_an_unmigrated_database_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    result = run(["keys", "create", "--tenant", "t"], {"S4C_DATABASE_URL": url})
    assert result.exit_code == 1
    assert "s4c db upgrade" in result.output
    assert "Traceback" not in result.output


def test_submit_status_cancel_round_trip(
    live_api: LiveApi, api_key: str, write_jsonl: Callable[[list[dict[str, object]]], Path]
) -> None:
    env = api_env(live_api, api_key)
    path = write_jsonl([batch_line("a", "Hello"), batch_line("b", "Bye")])
    submitted = run(["submit", str(path), "-m", "team=cli"], env)
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()
    assert job_id.startswith("job_")

    status = run(["status", job_id, "--json"], env)
    assert status.exit_code == 0, status.output
    body = json.loads(status.stdout)
    assert body["id"] == job_id
    assert body["request_counts"]["total"] == 2
    assert body["metadata"] == {"team": "cli"}

    human = run(["status", job_id], env)
    assert f"job {job_id}" in human.stdout and "2 total" in human.stdout

    cancelled = run(["cancel", job_id], env)
    assert cancelled.exit_code == 0, cancelled.output
    assert job_id in cancelled.stdout


def test_submit_native_json_file(live_api: LiveApi, api_key: str, tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"requests": [{"custom_id": "x", "prompt": "hi"}]}))
    result = run(["submit", str(path), "--json"], api_env(live_api, api_key))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["request_counts"]["total"] == 1


def test_submit_with_a_completion_window_shows_when_the_job_expires(
    live_api: LiveApi,
    api_key: str,
    tmp_path: Path,
    write_jsonl: Callable[[list[dict[str, object]]], Path],
) -> None:
    env = api_env(live_api, api_key)
    jsonl_job = run(
        [
            "submit",
            str(write_jsonl([batch_line("a", "Hi")])),
            "--completion-window",
            "24h",
            "--json",
        ],
        env,
    )
    assert jsonl_job.exit_code == 0, jsonl_job.output
    body = json.loads(jsonl_job.stdout)
    assert body["completion_window"] == "24h" and body["expires_at"] == body["created_at"] + 86400
    human = run(["status", body["id"]], env)
    assert "window:   24h, expires 20" in human.stdout and " UTC" in human.stdout
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"requests": [{"custom_id": "x", "prompt": "hi"}]}))
    native = run(["submit", str(path), "--completion-window", "45m", "--json"], env)
    assert native.exit_code == 0, native.output
    assert json.loads(native.stdout)["completion_window"] == "45m"
    bad = run(["submit", str(path), "--completion-window", "1 week"], env)
    assert bad.exit_code == 1 and "completion_window" in bad.output
    assert "Traceback" not in bad.output


def test_a_malformed_jsonl_file_is_a_clear_error_naming_the_line(
    live_api: LiveApi, api_key: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(batch_line("a", "ok")) + "\n{not json\n")
    result = run(["submit", str(path)], api_env(live_api, api_key))
    assert result.exit_code == 1
    assert result.output.startswith("Error:")
    assert "line 2" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "env_key", "expected"),
    [
        (["status", "job_x"], None, "no API key"),
        (["status", "job_x"], "s4c_wrong", "401"),
        (["results", "job_doesnotexist"], "valid", "404"),
        (["submit", "/nonexistent.jsonl"], "valid", "does not exist"),
        (["submit", "{tmp}/x.jsonl", "-m", "novalue"], "valid", "KEY=VALUE"),
        (["worker"], None, "no broker"),
    ],
)
def test_user_errors_exit_1_with_one_line_and_no_traceback(
    live_api: LiveApi,
    api_key: str,
    tmp_path: Path,
    args: list[str],
    env_key: str | None,
    expected: str,
) -> None:
    (tmp_path / "x.jsonl").write_text(json.dumps(batch_line("a", "hi")) + "\n")
    env = {"S4C_API_URL": live_api.url}
    if env_key is not None:
        env["S4C_API_KEY"] = api_key if env_key == "valid" else env_key
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=True)
    assert result.exit_code in (1, 2), result.output
    assert expected in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_no_service_listening_is_a_clear_error() -> None:
    env = {"S4C_API_URL": f"http://127.0.0.1:{find_free_port()}", "S4C_API_KEY": "s4c_x"}
    result = run(["cancel", "job_x"], env)
    assert result.exit_code == 1
    assert "cannot reach the s4c API" in result.output


def test_results_of_a_job_without_results_print_nothing(
    live_api: LiveApi, api_key: str, tmp_path: Path
) -> None:
    job = Client(live_api.url, api_key).submit([{"custom_id": "a", "prompt": "hi"}])
    env = api_env(live_api, api_key)
    printed = run(["results", job.id], env)
    assert printed.exit_code == 0, printed.output
    assert printed.stdout == ""
    out = tmp_path / "out.jsonl"
    saved = run(["results", job.id, "-o", str(out)], env)
    assert saved.exit_code == 0, saved.output
    assert out.read_text() == ""


def test_a_bad_setting_is_a_clear_error() -> None:
    result = run(["status", "job_x"], {"S4C_CHUNK_SIZE": "many", "S4C_API_KEY": "k"})
    assert result.exit_code == 1
    assert "S4C_CHUNK_SIZE must be an integer" in result.output


def test_worker_with_an_unknown_device_is_a_clear_error() -> None:
    result = run(["worker", "--device", "tpu"], {"S4C_BROKER_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == 1
    assert "unknown device 'tpu'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nonsense", "bad S4C_DATABASE_URL"),
        (f"postgresql+psycopg://postgres@127.0.0.1:{find_free_port()}/x", "cannot reach"),
    ],
)
def test_an_unusable_database_is_a_clear_error(url: str, expected: str) -> None:
    result = run(["keys", "create", "--tenant", "t"], {"S4C_DATABASE_URL": url})
    assert result.exit_code == 1
    assert expected in result.output
    assert "Traceback" not in result.output


def test_model_fetch_from_a_tampered_local_file_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bogus.write_bytes(b"not the pinned model")
    result = run(["model", "fetch", "--from", str(bogus)], {"S4C_HOME": str(tmp_path / "home")})
    assert result.exit_code == 1
    assert "model fetch failed" in result.output and "sha256" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "home" / "models" / "SmolLM2-135M-Instruct").exists()
