"""The Engine facade on the real default model: greedy output equals transformers' greedy
output for plain and speculative decoding (random heads; the shipped heads, with an answer
datastore), prompt validation, heads fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from s4c_engine.attention import GQA_SDPA
from s4c_engine.config import ChatMessage, Prompt, SamplingParams
from s4c_engine.engine import Engine
from s4c_engine.errors import HeadsMismatchError, PromptError
from s4c_engine.heads import DraftHeads, HeadConfig
from tests.model_fixtures import DEFAULT_MODEL_DIR, has_default_model

pytestmark = pytest.mark.real_model


@pytest.fixture(autouse=True, scope="module")
def _default_model_present() -> None:
    """A missing model is a failure, never a skip: these are the suite's real-model checks."""
    if not has_default_model():
        pytest.fail(f"default model not found at {DEFAULT_MODEL_DIR}: run `make setup`")


QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "List three prime numbers and explain why they are prime.",
]
MAX_TOKENS = 20


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(DEFAULT_MODEL_DIR, method="ar", max_batch_size=4)


@pytest.fixture(scope="module")
def hf_greedy(engine: Engine) -> list[list[int]]:
    """Greedy tokens of the stock model: transformers' SDPA and linear layers (the engine's
    target runs our attention function and few-row kernels on the CPU)."""
    from transformers import AutoModelForCausalLM

    stock = AutoModelForCausalLM.from_pretrained(
        str(DEFAULT_MODEL_DIR), dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    out = []
    for q in QUESTIONS:
        ids = engine.codec.encode(Prompt(messages=(ChatMessage("user", q),)))
        gen = stock.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False)
        out.append(gen[0, len(ids) :].tolist())
    return out


def _prompts() -> list[Prompt]:
    return [Prompt(messages=(ChatMessage("user", q),)) for q in QUESTIONS]


def test_cpu_target_runs_the_grouped_attention(engine: Engine) -> None:
    assert engine.target.config._attn_implementation == GQA_SDPA


def test_plain_greedy_equals_transformers(engine: Engine, hf_greedy: list[list[int]]) -> None:
    results = engine.generate(_prompts(), [SamplingParams(max_tokens=MAX_TOKENS)] * len(QUESTIONS))
    assert [list(r.token_ids) for r in results] == hf_greedy
    assert engine.method == "ar"
    for r in results:
        assert r.text == engine.codec.decode(r.token_ids)
        assert r.finish_reason == ("stop" if r.token_ids[-1] == 2 else "length")
        assert (
            r.stats.tau == 1.0 and r.stats.batch_size == len(QUESTIONS) and r.stats.tree_nodes == 1
        )


@pytest.mark.slow
def test_shipped_heads_with_an_answer_datastore_stay_exact(
    engine: Engine, hf_greedy: list[list[int]], tmp_path: Path
) -> None:
    """The shipped heads load by default; a datastore of the model's own answers (here to
    these very prompts, so its chains are right) drafts, and the output stays hf's."""
    from s4c_engine.datastore import AnswerDatastore

    default = Engine.load(DEFAULT_MODEL_DIR, max_batch_size=4)
    assert default.method == "s4c" and default.heads is not None and default.datastore is None
    prompt_ids = [engine.codec.encode(p) for p in _prompts()]
    AnswerDatastore.build(
        hf_greedy * 2,
        lead=[p[-8:] for p in prompt_ids] * 2,
        target_name=engine.info.name,
        vocab_size=engine.info.vocab_size,
    ).save(tmp_path / "ds")
    spec = Engine.load(DEFAULT_MODEL_DIR, max_batch_size=4, datastore_path=tmp_path / "ds")
    assert spec.datastore is not None
    assert spec.datastore.propose(prompt_ids[0], 6) == hf_greedy[0][:6]
    params = [SamplingParams(max_tokens=MAX_TOKENS)]
    forwards = {"with": 0, "without": 0}
    for i, prompt in enumerate(_prompts()):  # batch 1: the largest tree, both lookup chains
        with_store = spec.generate([prompt], params)[0]
        without = default.generate([prompt], params)[0]
        assert list(with_store.token_ids) == list(without.token_ids) == hf_greedy[i]
        forwards["with"] += with_store.stats.target_forwards
        forwards["without"] += without.stats.target_forwards
    # Knowing the answers, the datastore's chains are accepted: far fewer target forwards.
    assert forwards["with"] < forwards["without"], forwards
    # The engine keeps what its tree tuner measured from call to call (one tuner per policy).
    assert list(default._tuners) == [default.policy]
    assert default._tuners[default.policy].step >= forwards["without"] - len(_prompts())
    assert default.heads.config.feature_layers and default.target.feature_layers
    medusa = Engine.load(DEFAULT_MODEL_DIR, method="medusa", datastore_path=tmp_path / "ds")
    assert medusa.datastore is None  # the Medusa-1 baseline drafts from its heads alone


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["s4c", "medusa"])
def test_speculative_greedy_with_random_heads_equals_transformers(
    engine: Engine, hf_greedy: list[list[int]], kind: str, tmp_path: Path
) -> None:
    model = engine.target.model
    heads = DraftHeads.create(HeadConfig.for_target(model, engine.info.name, kind=kind), model)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    heads.save(tmp_path / "heads")
    spec = Engine.load(
        DEFAULT_MODEL_DIR, heads_path=tmp_path / "heads", method=kind, max_batch_size=4
    )
    assert spec.method == kind
    results = spec.generate(_prompts(), [SamplingParams(max_tokens=MAX_TOKENS)] * len(QUESTIONS))
    assert [list(r.token_ids) for r in results] == hf_greedy
    assert max(r.stats.tree_nodes for r in results) > 1
    if kind == "s4c":  # batch 1 takes the largest tree
        alone = spec.generate(_prompts()[:1], [SamplingParams(max_tokens=MAX_TOKENS)])
        assert list(alone[0].token_ids) == hf_greedy[0]
    assert (
        spec.generate(_prompts()[:1], [SamplingParams(max_tokens=8)], method="ar")[
            0
        ].stats.tree_nodes
        == 1
    )


def test_bad_prompt_is_refused_before_anything_runs(engine: Engine) -> None:
    too_long = Prompt(token_ids=(5,) * engine.info.max_context)
    with pytest.raises(PromptError, match="prompt 1") as err:
        engine.generate([Prompt(text="hi"), too_long], [SamplingParams()] * 2)
    assert err.value.index == 1
    with pytest.raises(PromptError, match="prompt 0"):
        engine.generate([Prompt(token_ids=(10**6,))], [SamplingParams()])


def test_stop_strings_cut_the_text(engine: Engine) -> None:
    prompt = Prompt(messages=(ChatMessage("user", QUESTIONS[0]),))
    full = engine.generate([prompt], [SamplingParams(max_tokens=MAX_TOKENS)])[0]
    stop = full.text.split()[2]
    cut = engine.generate([prompt], [SamplingParams(max_tokens=MAX_TOKENS, stop=(stop,))])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert len(cut.token_ids) < len(full.token_ids)


def test_missing_heads_fall_back_to_plain_and_foreign_heads_are_refused(tmp_path: Path) -> None:
    plain = Engine.load(DEFAULT_MODEL_DIR, heads_path=tmp_path / "nothing", method="s4c")
    assert plain.method == "ar"
    model = plain.target.model
    config = HeadConfig.for_target(model, "another-model")
    DraftHeads.create(config, model).save(tmp_path / "foreign")
    with pytest.raises(HeadsMismatchError, match="another-model"):
        Engine.load(DEFAULT_MODEL_DIR, heads_path=tmp_path / "foreign", method="s4c")
