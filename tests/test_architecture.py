"""The layering rules hold: import-linter contracts, and the API process never loads torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from jobs.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def test_import_linter_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _modules_loaded_by(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_building_the_api_app_leaves_torch_unloaded(tmp_path: Path) -> None:
    model_dir = Settings.from_env().resolved_model_dir  # the tokenizer `make setup` fetched
    statement = (
        "from jobs.settings import Settings\n"
        "from jobs.migrate import upgrade\n"
        "from api import create_app\n"
        f"settings = Settings.from_env({{'S4C_HOME': {str(tmp_path)!r},\n"
        f"                               'S4C_MODEL_DIR': {str(model_dir)!r},\n"
        "                               'S4C_BROKER_URL': 'redis://127.0.0.1:1/0'})\n"
        "upgrade(settings)\n"
        "app = create_app(settings)\n"
        "assert app.test_client().get('/healthz').status_code == 200\n"
    )
    loaded = _modules_loaded_by(statement)
    assert "api" in loaded
    assert not {"torch", "transformers"} & loaded


def test_cli_and_client_import_without_torch() -> None:
    loaded = _modules_loaded_by("import s4c.cli, s4c.client, s4c.launcher")
    assert "s4c.cli" in loaded
    assert "torch" not in loaded
