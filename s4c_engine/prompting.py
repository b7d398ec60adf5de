"""Text at the edge: prompts to token ids (chat template included) and ids back to text.

Torch-free on purpose (`tokenizers` + `jinja2` only), so the API can count prompt tokens and
check context limits without loading the model stack. The chat template is rendered the way
Hugging Face `apply_chat_template(..., add_generation_prompt=True)` renders it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from s4c_engine.config import ModelInfo, Prompt

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def read_model_info(model_dir: Path, name: str) -> ModelInfo:
    """ModelInfo from a HF model directory's config.json, without loading weights."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return ModelInfo(
        name=name,
        max_context=int(config["max_position_embeddings"]),
        vocab_size=int(config["vocab_size"]),
    )


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a chat template with the environment HF uses (sandboxed, trim/lstrip blocks)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _token_text(value: Any) -> str | None:
    """tokenizer_config values are strings or AddedToken dicts ({"content": ...})."""
    if isinstance(value, dict):
        return str(value.get("content"))
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class PromptCodec:
    """Encodes `Prompt`s to token ids and decodes ids to text for one model directory."""

    tokenizer: Tokenizer
    chat_template: jinja2.Template | None
    special_tokens: dict[str, str]
    eos_token_ids: tuple[int, ...]

    @classmethod
    def load(cls, model_dir: Path) -> PromptCodec:
        """Read tokenizer.json, tokenizer_config.json, the chat template and the EOS ids."""
        model_dir = Path(model_dir)
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tok_config = _read_json(model_dir / "tokenizer_config.json")
        special = {k: t for k in SPECIAL_TOKEN_KEYS if (t := _token_text(tok_config.get(k)))}
        template_file = model_dir / "chat_template.jinja"
        source = (
            template_file.read_text()
            if template_file.is_file()
            else tok_config.get("chat_template")
        )
        template = compile_chat_template(source) if isinstance(source, str) else None
        return cls(tokenizer, template, special, _eos_ids(model_dir, tokenizer, special))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The chat template applied to `messages` with the generation prompt appended."""
        if self.chat_template is None:
            raise ValueError("this model has no chat template; send a text prompt")
        return self.chat_template.render(
            messages=messages,
            tools=None,
            documents=None,
            add_generation_prompt=True,
            **self.special_tokens,
        )

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids for a prompt: ids as given, text verbatim, messages via the chat template."""
        if prompt.token_ids is not None:
            return list(prompt.token_ids)
        if prompt.messages is not None:
            rendered = self.render_chat(
                [{"role": m.role, "content": m.content} for m in prompt.messages]
            )
            # Like HF: the template already holds any special tokens it wants.
            return list(self.tokenizer.encode(rendered, add_special_tokens=False).ids)
        assert prompt.text is not None
        return list(self.tokenizer.encode(prompt.text, add_special_tokens=True).ids)

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.encode(prompt))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens dropped."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))


def _read_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def _eos_ids(model_dir: Path, tokenizer: Tokenizer, special: dict[str, str]) -> tuple[int, ...]:
    """EOS ids from generation_config.json (int or list), then the tokenizer's eos_token."""
    ids: list[int] = []
    gen = _read_json(model_dir / "generation_config.json").get("eos_token_id")
    for value in gen if isinstance(gen, list) else [gen]:
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    if "eos_token" in special:
        token_id = tokenizer.token_to_id(special["eos_token"])
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    return tuple(ids)
