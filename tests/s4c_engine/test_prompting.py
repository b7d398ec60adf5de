"""PromptCodec against transformers' own tokenizer on the default model (no torch model load)."""

from __future__ import annotations

import pytest

from s4c_engine.config import ChatMessage, Prompt
from s4c_engine.prompting import PromptCodec, read_model_info
from tests.model_fixtures import DEFAULT_MODEL_DIR

MODEL_DIR = DEFAULT_MODEL_DIR

pytestmark = pytest.mark.real_model


@pytest.fixture(autouse=True, scope="module")
def _default_model_present() -> None:
    """A missing model is a failure, never a skip (make setup fetches it)."""
    if not (MODEL_DIR / "tokenizer.json").is_file():
        pytest.fail(f"default model not found at {MODEL_DIR}: run `make setup`")


CONVERSATIONS = [
    [("user", "What is the capital of France?")],
    [("system", "You are terse."), ("user", "Name three colours.")],
    [("user", "Hi"), ("assistant", "Hello! How can I help?"), ("user", "Write a haiku about tea.")],
    [("user", "Ünïcödé ✓ and  double  spaces\nand a newline")],
    [("system", ""), ("user", "")],
]


@pytest.fixture(scope="module")
def codec() -> PromptCodec:
    return PromptCodec.load(MODEL_DIR)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_chat_encoding_equals_hf_apply_chat_template(codec: PromptCodec, conversation) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    messages = [{"role": r, "content": c} for r, c in conversation]
    expected = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert codec.render_chat(messages) == expected
    expected_ids = hf(expected, add_special_tokens=False)["input_ids"]
    prompt = Prompt(messages=tuple(ChatMessage(r, c) for r, c in conversation))
    assert codec.encode(prompt) == expected_ids
    assert codec.count_tokens(prompt) == len(expected_ids)


def test_text_and_token_prompts(codec: PromptCodec) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    text = "The quick brown fox"
    assert codec.encode(Prompt(text=text)) == hf(text)["input_ids"]
    assert codec.encode(Prompt(token_ids=(5, 6, 7))) == [5, 6, 7]
    ids = codec.encode(Prompt(text=text))
    assert codec.decode(ids) == hf.decode(ids, skip_special_tokens=True) == text


def test_eos_and_model_info(codec: PromptCodec) -> None:
    assert codec.eos_token_ids == (2,)
    info = read_model_info(MODEL_DIR, "SmolLM2-135M-Instruct")
    assert (info.max_context, info.vocab_size) == (8192, 49152)


def test_prompting_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, s4c_engine.prompting, s4c_engine.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
