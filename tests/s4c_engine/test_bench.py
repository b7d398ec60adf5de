"""Benchmark plumbing on a tiny random model (a smoke run, not a timed test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import GenerationConfig

from s4c_engine.bench.prompts import (
    default_prompts_path,
    first_per_category,
    parse_row,
    read_bench_prompts,
)
from s4c_engine.bench.report import markdown
from s4c_engine.bench.runner import REPO_ROOT, BenchConfig, cli_main
from s4c_engine.config import ChatMessage, Prompt
from s4c_engine.heads import DraftHeads, HeadConfig
from s4c_engine.prompting import PromptCodec
from tests.model_fixtures import tiny_model

SPECIAL = ["<unk>", "<|im_start|>", "<|im_end|>"]
CHARS = list("abcdefghijklmnopqrstuvwxyz .,?!0123456789")


def write_tiny_model_dir(path: Path) -> Path:
    """A tiny llama + a character-level tokenizer with a chat template, as a model directory."""
    vocab = {t: i for i, t in enumerate(SPECIAL + CHARS)}
    model = tiny_model("llama", vocab_size=64)
    model.generation_config = GenerationConfig(eos_token_id=2, pad_token_id=0)
    model.save_pretrained(path)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.add_special_tokens(SPECIAL)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "bos_token": "<|im_start|>", "pad_token": "<unk>"})
    )
    (path / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>{% endif %}"
    )
    for kind in ("s4c", "medusa"):
        config = HeadConfig.for_target(
            model, path.name, kind=kind, num_heads=3, draft_vocab_size=48
        )
        torch.manual_seed(1)
        heads = DraftHeads.create(config, model)
        with torch.no_grad():  # random (untrained) heads: still lossless, only slower
            for p in heads.parameters():
                p.add_(0.1 * torch.randn_like(p))
        heads.save(path.parent / f"heads-{kind}")
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model_dir(tmp_path_factory.mktemp("bench") / "tiny-bench")


def test_both_prompt_formats_and_first_n_per_category(tmp_path: Path) -> None:
    spec = parse_row({"question_id": 81, "category": "writing", "turns": ["a", "b"]}, 1)
    assert (spec.category, spec.subcategory, spec.turns) == ("mt_bench", "writing", ("a", "b"))
    plain = parse_row({"id": "x", "category": "code", "prompt": "hi"}, 2)
    assert (plain.id, plain.category, plain.turns) == ("x", "code", ("hi",))
    with pytest.raises(ValueError, match="line 3"):
        parse_row({"text": "?"}, 3)
    rows = [parse_row({"id": str(i), "category": "ab"[i % 2], "prompt": "p"}, i) for i in range(7)]
    assert [p.id for p in first_per_category(rows, 2)] == ["0", "1", "2", "3"]


def test_default_prompts_are_spec_bench_beside_the_repository() -> None:
    prompts = read_bench_prompts(default_prompts_path(REPO_ROOT))
    assert len(prompts) == 480
    picked = first_per_category(prompts, 5)
    assert len(picked) == 30
    assert {p.category for p in picked} == {
        "mt_bench",
        "translation",
        "summarization",
        "qa",
        "math_reasoning",
        "rag",
    }


def test_bench_runs_every_method_and_reports_issue_shapes(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "p.jsonl"
    rows = [
        {"id": f"q{i}", "category": "ab"[i % 2], "prompt": f"what is {i} and {i + 1}?"}
        for i in range(6)
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "bench.json"
    report = cli_main(
        BenchConfig(
            model_dir=tiny_dir,
            prompts=prompts,
            per_category=2,
            max_new_tokens=12,
            batch_sizes=(1, 2),
            batch_methods=("hf", "ar", "s4c"),
            json_out=out,
            s4c_heads=tiny_dir.parent / "heads-s4c",
            medusa_heads=tiny_dir.parent / "heads-medusa",
            progress=False,
        )
    )
    saved = json.loads(out.read_text())
    assert saved["methods"].keys() == {"hf", "hf-pld", "ar", "medusa", "s4c"}
    assert report["engine_methods"] == {"ar": "ar", "medusa": "medusa", "s4c": "s4c"}
    for name, summary in saved["methods"].items():
        overall = summary["overall"]
        assert overall["prompts"] == 4 and overall["tokens_per_s"] > 0
        assert set(summary["categories"]) == {"a", "b"}
        # Greedy fp32 speculation and prompt lookup are lossless: same tokens as hf.
        assert overall["exact_match"] == 1.0, name
        for key in ("speedup_vs_hf", "speedup_vs_ar", "tau", "peak_rss_mb"):
            assert key in overall
    assert saved["methods"]["ar"]["overall"]["tau"] == pytest.approx(1.0)
    s4c = saved["methods"]["s4c"]["overall"]
    assert s4c["tau"] >= 1.0 and 1 <= len(s4c["acceptance_per_depth"]) <= 3
    assert saved["batches"].keys() == {"1", "2"}
    assert saved["batches"]["2"]["s4c"]["exact_match"] == 1.0
    assert saved["batches"]["2"]["hf"]["rows"] == 4
    records = saved["records"]
    assert len([r for r in records if r["batch_size"] == 1]) == 5 * 4
    assert all(r["new_tokens"] <= 12 for r in records)
    table = capsys.readouterr().out
    assert table == markdown(saved)
    assert "| s4c |" in table and "| 2 | s4c |" in table


def test_second_turn_follows_each_methods_own_first_answer(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "turns.jsonl"
    rows = [
        {
            "question_id": 81,
            "category": "writing",
            "turns": ["write a poem.", "now make it short."],
        },
        {"question_id": 82, "category": "math", "turns": ["what is 1 and 2?", "and 3 and 4?"]},
        {"question_id": 83, "category": "qa", "turns": ["who is he?"]},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = cli_main(
        BenchConfig(
            model_dir=tiny_dir,
            prompts=prompts,
            turns=2,
            methods=("hf", "ar", "s4c"),
            max_new_tokens=10,
            batch_sizes=(1, 2),
            batch_methods=("hf", "s4c"),
            s4c_heads=tiny_dir.parent / "heads-s4c",
            progress=False,
        )
    )
    records = [r for r in report["records"] if r["batch_size"] == 1]
    assert [(r["prompt_id"], r["turn"]) for r in records if r["method"] == "hf"] == [
        ("81", 1),
        ("81", 2),
        ("82", 1),
        ("82", 2),
        ("83", 1),
    ]
    # Methods interleave within each turn: hf ar s4c, hf ar s4c, ...
    assert [r["method"] for r in records] == ["hf", "ar", "s4c"] * 5
    codec = PromptCodec.load(tiny_dir)
    for first, second in ((records[0], records[3]), (records[6], records[9])):
        assert (first["turn"], second["turn"]) == (1, 2) and first["method"] == second["method"]
        question = next(r["turns"] for r in rows if str(r["question_id"]) == first["prompt_id"])
        answer = codec.decode(first["tokens"]).strip()
        chat = (
            ChatMessage("user", question[0]),
            ChatMessage("assistant", answer),
            ChatMessage("user", question[1]),
        )
        # The second turn's prompt is the chat with the method's own first answer in it.
        assert second["prompt_tokens"] == codec.count_tokens(Prompt(messages=chat))
        assert second["prompt_tokens"] > first["prompt_tokens"] + first["new_tokens"]
    assert all(r["exact_match_hf"] for r in records)
    for name, summary in report["methods"].items():
        overall = summary["overall"]
        mine = [r for r in records if r["method"] == name]
        assert (overall["prompts"], overall["answers"]) == (3, 5)
        assert overall["new_tokens"] == sum(r["new_tokens"] for r in mine)
        assert overall["new_tokens"] > sum(r["new_tokens"] for r in mine if r["turn"] == 1)
        assert overall["exact_match"] == 1.0
    assert report["turns"] == {"asked": 2, "answers_per_turn": {"1": 3, "2": 2}}
    batched = [r for r in report["records"] if r["batch_size"] == 2]
    assert sorted((r["prompt_id"], r["turn"]) for r in batched if r["method"] == "s4c") == [
        ("81", 1),
        ("81", 2),
        ("82", 1),
        ("82", 2),
        ("83", 1),
    ]
    assert report["batches"]["2"]["s4c"]["exact_match"] == 1.0
    assert report["batches"]["2"]["hf"]["rows"] == 5
    table = capsys.readouterr().out
    assert table.startswith("Turns asked: 2; 5 answers to 3 prompts (turn 1: 3, turn 2: 2).")


def test_plain_prompts_have_one_turn_whatever_turns_asks(tiny_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "plain.jsonl"
    prompts.write_text(json.dumps({"id": "p", "category": "c", "prompt": "hello?"}) + "\n")
    report = cli_main(
        BenchConfig(
            model_dir=tiny_dir,
            prompts=prompts,
            turns=2,
            methods=("hf",),
            max_new_tokens=4,
            progress=False,
        )
    )
    assert [r["turn"] for r in report["records"]] == [1]
    assert report["turns"] == {"asked": 2, "answers_per_turn": {"1": 1}}
    with pytest.raises(ValueError, match="turns"):
        BenchConfig(model_dir=tiny_dir, turns=0)
