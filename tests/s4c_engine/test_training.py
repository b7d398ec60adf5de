"""Head training on a tiny random model: distillation records, loss falls, resume, round-trip."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GenerationConfig, LlamaForCausalLM

from s4c_engine.config import SamplingParams
from s4c_engine.decoding import DecodeRequest, decode_batch
from s4c_engine.drafting import TreeShape
from s4c_engine.errors import HeadsMismatchError
from s4c_engine.heads import DraftHeads
from s4c_engine.stopping import StopRule
from s4c_engine.target import Target
from s4c_engine.training.data import build_draft_vocab, load_splits
from s4c_engine.training.distill import (
    EncodedPrompt,
    distill_block,
    load_done_ids,
    write_shard,
)
from s4c_engine.training.prompts import TrainPrompt, balanced_mix
from s4c_engine.training.train import TrainConfig, train_heads
from s4c_engine.tree_policy import TreePolicy
from tests.model_fixtures import tiny_model

VOCAB = 96
EOS = 2


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tiny_model("llama", vocab_size=VOCAB)
    model.generation_config = GenerationConfig(eos_token_id=EOS, pad_token_id=EOS)
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model.save_pretrained(path)
    return path


HEADER = 2  # prompt positions before this are not stored (like a chat template's header)


@pytest.fixture(scope="module")
def distilled_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = Target.load(tiny_model_dir)
    out = tmp_path_factory.mktemp("distill")
    gen = torch.Generator().manual_seed(1)
    for shard in range(4):
        items = [
            EncodedPrompt(
                TrainPrompt(f"p{shard}-{r}", "cat" + str(r % 2), ""),
                torch.randint(3, VOCAB, (3 + r,), generator=gen).tolist(),
            )
            for r in range(8)
        ]
        prompts = [e.ids for e in items]
        # Shard 3 stores answer positions only (start = len(prompt) - 1), like old records.
        starts = [HEADER if shard < 3 else len(p) - 1 for p in prompts]
        # Recorded while answering, 5 rows at a time: rows leave and join mid-block.
        result = distill_block(
            target,
            prompts,
            starts,
            eos_ids={EOS},
            max_new_tokens=24,
            max_batch_size=5,
            top_k=8,
            feature_layers=(0,),
        )
        write_shard(out, f"shard-{shard:06d}.safetensors", items, result)
    return out


def test_distilled_answers_are_the_targets_greedy_continuations(
    tiny_model_dir: Path, distilled_dir: Path
) -> None:
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    records = [json.loads(x) for x in (distilled_dir / "index.jsonl").read_text().splitlines()]
    for rec in records[:3]:
        ids = torch.tensor([rec["prompt_ids"]])
        out = model.generate(
            ids, max_new_tokens=24, do_sample=False, eos_token_id=EOS, pad_token_id=EOS
        )
        assert out[0, ids.shape[1] :].tolist()[: len(rec["answer_ids"])] == rec["answer_ids"]


def test_distilled_states_reproduce_the_targets_logits(
    tiny_model_dir: Path, distilled_dir: Path
) -> None:
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    records = [json.loads(x) for x in (distilled_dir / "index.jsonl").read_text().splitlines()]
    assert len(load_done_ids(distilled_dir)) == 32
    splits = load_splits(distilled_dir, val_percent=0.0, layers=(0,))
    data = splits.train
    offset = 0
    for k, rec in enumerate(records):
        seq = rec["prompt_ids"] + rec["answer_ids"]
        start, p = rec["start"], len(rec["prompt_ids"])
        assert start == (HEADER if k < 24 else p - 1)
        n = len(seq) - 1 - start
        if k in (0, 5, 7, 27):  # records with prompt positions, one with answers only
            with torch.no_grad():
                out = model(torch.tensor([seq]), output_hidden_states=True)
            rows = slice(offset, offset + n)
            hidden = data.hidden[rows].float()
            assert torch.allclose(hidden, out.hidden_states[-1][0, start : start + n], atol=2e-2)
            # hidden_states[1] is the output of decoder layer 0
            layer0 = data.layers[0][rows].float()
            assert torch.allclose(layer0, out.hidden_states[1][0, start : start + n], atol=2e-2)
            assert data.token[rows].tolist() == seq[start + 1 :]
            want = out.logits[0, start : start + n].topk(8, dim=-1)
            assert torch.allclose(data.topk_values[rows].float(), want.values, atol=2e-2)
            assert data.is_answer[rows].tolist() == [j >= p - 1 for j in range(start, start + n)]
            # On answer positions the stored token is the target's greedy (top-1) token.
            answer = data.is_answer[rows]
            top1 = data.topk_ids[rows, 0][answer]
            assert torch.equal(top1, data.token[rows][answer])
        offset += n
    assert offset == data.num_positions


def test_draft_vocab_is_most_frequent_first_with_forced_ids() -> None:
    vocab = build_draft_vocab(torch.tensor([5, 5, 5, 7, 7, 9]), 4, 20, always=(2,))
    assert vocab.ids.tolist() == [2, 5, 7, 9]
    assert vocab.coverage == 1.0
    assert build_draft_vocab(torch.tensor([5, 5, 7]), 1, 20).coverage == pytest.approx(2 / 3)


def test_balanced_mix_caps_each_category_and_is_seeded() -> None:
    rows = [TrainPrompt(f"a{i}", "a", "") for i in range(10)] + [TrainPrompt("b0", "b", "")]
    mix = balanced_mix(rows, 3, seed=0)
    assert sorted(r.category for r in mix) == ["a", "a", "a", "b"]
    assert mix == balanced_mix(rows, 3, seed=0)


def _config(model_dir: Path, data_dir: Path, out: Path, kind: str, **kw: object) -> TrainConfig:
    return TrainConfig(
        model_dir=model_dir,
        data_dir=data_dir,
        out_dir=out,
        kind=kind,  # type: ignore[arg-type]
        num_heads=3,
        draft_vocab_size=64,
        steps=40,
        batch_size=64,
        lr=2e-2,
        warmup_steps=5,
        val_percent=25.0,
        checkpoint_every=10,
        eval_every=1000,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("kind", ["s4c", "medusa"])
def test_training_lowers_validation_loss_and_heads_round_trip(
    kind: str, tiny_model_dir: Path, distilled_dir: Path, tmp_path: Path
) -> None:
    result = train_heads(_config(tiny_model_dir, distilled_dir, tmp_path, kind))
    first, last = result.history[0], result.evaluation
    assert first.step == 0 and last.step == 40
    assert last.loss < first.loss - 0.05
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["evaluation"]["top1"]) == 3

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    loaded = DraftHeads.load(result.heads_dir, model, "tiny-llama")
    assert loaded.config.kind == kind
    fresh = DraftHeads.create(loaded.config, model, loaded.draft_vocab)
    h = torch.randn(5, 32)
    path = torch.randint(0, VOCAB, (5, 2))
    tokens = path if kind == "s4c" else None
    assert not torch.allclose(loaded.head_logits(1, h, tokens), fresh.head_logits(1, h, tokens))


def test_stopped_run_resumes_to_the_same_heads(
    tiny_model_dir: Path, distilled_dir: Path, tmp_path: Path
) -> None:
    whole = train_heads(_config(tiny_model_dir, distilled_dir, tmp_path / "whole", "s4c"))
    part = _config(tiny_model_dir, distilled_dir, tmp_path / "split", "s4c", stop_after=20)
    paused = train_heads(part)
    assert paused.steps == 20 and not (tmp_path / "split" / "heads").exists()
    resumed = train_heads(_config(tiny_model_dir, distilled_dir, tmp_path / "split", "s4c"))
    assert resumed.steps == 40
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    a = DraftHeads.load(whole.heads_dir, model, "tiny-llama").state_dict()
    b = DraftHeads.load(resumed.heads_dir, model, "tiny-llama").state_dict()
    for name, tensor in a.items():
        assert torch.allclose(tensor, b[name], atol=1e-6), name


def test_s4c_heads_on_fused_layer_features_train_and_round_trip(
    tiny_model_dir: Path, distilled_dir: Path, tmp_path: Path
) -> None:
    config = _config(tiny_model_dir, distilled_dir, tmp_path, "s4c", feature_layers=(0,))
    result = train_heads(config)
    assert result.evaluation.loss < result.history[0].loss - 0.05
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    loaded = DraftHeads.load(result.heads_dir, model, "tiny-llama")
    assert loaded.config.feature_layers == (0,)
    assert loaded.config.feature_size == 64
    h = torch.randn(5, 64)
    assert loaded.head_logits(2, h, torch.randint(0, VOCAB, (5, 3))).shape == (5, 64)


def test_context_heads_start_from_trained_heads_and_learn_from_there(
    tiny_model_dir: Path, distilled_dir: Path, tmp_path: Path
) -> None:
    base = train_heads(_config(tiny_model_dir, distilled_dir, tmp_path / "base", "s4c"))
    config = _config(
        tiny_model_dir,
        distilled_dir,
        tmp_path / "ctx",
        "s4c",
        context_heads=2,
        context_head_dim=8,
        init_heads=base.heads_dir,
        init_lr_scale=1.0,
    )
    result = train_heads(config)
    start, last = result.history[0], result.evaluation
    # Zero output projections: before training, the context changes nothing.
    assert start.top1 == pytest.approx(base.evaluation.top1, abs=1e-6)
    assert start.positions == base.evaluation.positions
    assert last.loss < start.loss - 0.02
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    loaded = DraftHeads.load(result.heads_dir, model, "tiny-llama")
    assert loaded.config.context_heads == 2 and loaded.config.context_start == HEADER
    assert torch.equal(
        loaded.draft_vocab, DraftHeads.load(base.heads_dir, model, "tiny-llama").draft_vocab
    )
    ckpt = torch.load(tmp_path / "ctx" / "checkpoint.pt", weights_only=False)
    assert ckpt["heads"]["context.out.0.weight"].abs().sum() > 0  # the new part trained


def test_trained_context_heads_train_further_with_their_own_weights_frozen(
    tiny_model_dir: Path, distilled_dir: Path, tmp_path: Path
) -> None:
    """A later stage from heads that already attend over the context: their context
    attention is taken over and keeps training at lr; init_lr_scale 0 freezes the rest."""
    ctx = {"context_heads": 2, "context_head_dim": 8}
    first = train_heads(_config(tiny_model_dir, distilled_dir, tmp_path / "one", "s4c", **ctx))
    config = _config(
        tiny_model_dir,
        distilled_dir,
        tmp_path / "two",
        "s4c",
        init_heads=first.heads_dir,
        init_lr_scale=0.0,
        **ctx,
    )
    result = train_heads(config)
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before = DraftHeads.load(first.heads_dir, model, "tiny-llama").state_dict()
    after = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=False)["heads"]
    assert any(name.startswith("context.") for name in before)
    for name, tensor in before.items():
        if name.startswith("context."):
            assert not torch.equal(after[name], tensor.float()), f"{name} did not train"
        else:
            expected = tensor.float() if tensor.is_floating_point() else tensor
            assert torch.equal(after[name], expected), f"{name} moved while frozen"
    # Taken over, not reset: the run starts where the first one's (fp16-saved) heads ended.
    assert result.history[0].loss == pytest.approx(first.evaluation.loss, rel=0.02)
    assert result.history[0].loss < first.history[0].loss - 0.05


def test_trained_heads_gain_fused_layers_as_a_new_part(
    tiny_model_dir: Path, distilled_dir: Path, tmp_path: Path
) -> None:
    """Fused decoder layers added to heads trained without them: the fuse projections start
    at zero (the heads score exactly as before), train at lr while the rest stays frozen.
    (Whether they help is a question for real data: on this tiny random model's 200
    validation positions they only overfit.)"""
    base = train_heads(_config(tiny_model_dir, distilled_dir, tmp_path / "base", "s4c"))
    config = _config(
        tiny_model_dir,
        distilled_dir,
        tmp_path / "fused",
        "s4c",
        feature_layers=(0,),
        init_heads=base.heads_dir,
        init_lr_scale=0.0,
    )
    result = train_heads(config)
    assert result.history[0].top1 == pytest.approx(base.evaluation.top1, abs=1e-6)
    assert result.history[0].loss == pytest.approx(base.evaluation.loss, rel=1e-4)
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before = DraftHeads.load(base.heads_dir, model, "tiny-llama").state_dict()
    after = DraftHeads.load(result.heads_dir, model, "tiny-llama")
    assert after.config.feature_layers == (0,)
    state = after.state_dict()
    assert all(state[f"fuse.{i}.weight"].abs().sum() > 0 for i in range(3))
    for name, tensor in before.items():
        assert torch.equal(state[name], tensor), f"{name} moved while frozen"


def test_a_later_stage_widens_the_draft_vocabulary_keeping_the_old_ids_first(
    tiny_model_dir: Path, distilled_dir: Path, tmp_path: Path
) -> None:
    base = train_heads(
        replace(
            _config(tiny_model_dir, distilled_dir, tmp_path / "base", "s4c"),
            draft_vocab_size=32,
            steps=10,
        )
    )
    assert base.draft_vocab_coverage < 1.0
    wide = train_heads(
        replace(
            _config(tiny_model_dir, distilled_dir, tmp_path / "wide", "s4c"),
            init_heads=base.heads_dir,
            draft_vocab_size=48,
            steps=10,
        )
    )
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    old = DraftHeads.load(base.heads_dir, model, "tiny-llama").draft_vocab
    new = DraftHeads.load(wide.heads_dir, model, "tiny-llama").draft_vocab
    assert len(new) == 48 and len(set(new.tolist())) == 48
    assert torch.equal(new[:32], old)
    assert wide.draft_vocab_coverage > base.draft_vocab_coverage
    # Not narrower: a smaller request keeps the trained heads' vocabulary.
    same = train_heads(
        replace(
            _config(tiny_model_dir, distilled_dir, tmp_path / "same", "s4c"),
            init_heads=wide.heads_dir,
            draft_vocab_size=16,
            steps=10,
        )
    )
    assert torch.equal(DraftHeads.load(same.heads_dir, model, "tiny-llama").draft_vocab, new)


def test_fused_heads_in_the_old_layout_are_refused(
    tiny_model_dir: Path, distilled_dir: Path, tmp_path: Path
) -> None:
    """Before `fuse`, the fused layers' columns sat inside input_proj (raw features): such a
    file does not mean what today's heads compute, so loading it fails clearly."""
    result = train_heads(
        replace(
            _config(tiny_model_dir, distilled_dir, tmp_path, "s4c", feature_layers=(0,)),
            steps=5,
        )
    )
    path = result.heads_dir / "heads.safetensors"
    state = load_file(str(path))
    for i in range(3):
        fuse = state.pop(f"fuse.{i}.weight")
        proj = state[f"input_proj.{i}.weight"]
        state[f"input_proj.{i}.weight"] = torch.cat([proj[:, :32], fuse, proj[:, 32:]], 1)
    save_file(state, str(path))
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with pytest.raises(HeadsMismatchError, match="old layout"):
        DraftHeads.load(result.heads_dir, model, "tiny-llama")


def test_context_heads_gain_fused_layers_and_decode_exactly_with_them(
    tiny_model_dir: Path, distilled_dir: Path, tmp_path: Path
) -> None:
    """The shipped heads' next stage in small: heads with context attention gain fused layers
    (and a wider vocabulary); they train, load, and greedy decoding with them equals plain."""
    ctx = {"context_heads": 2, "context_head_dim": 8}
    first = train_heads(
        replace(
            _config(tiny_model_dir, distilled_dir, tmp_path / "one", "s4c", **ctx),
            draft_vocab_size=32,
        )
    )
    result = train_heads(
        replace(
            _config(tiny_model_dir, distilled_dir, tmp_path / "two", "s4c", **ctx),
            feature_layers=(0,),
            init_heads=first.heads_dir,
            init_lr_scale=0.1,
            draft_vocab_size=48,
        )
    )
    assert result.history[0].step == 0 and result.evaluation.step == 40
    target = Target.load(tiny_model_dir)
    heads = DraftHeads.load(result.heads_dir, target.model, "tiny-llama").eval()
    assert heads.config.feature_layers == (0,) and heads.config.draft_vocab_size == 48
    prompts = [[5, 9, 11, 5, 9], [7, 3, 4, 8, 6, 7, 3]]
    requests = [
        DecodeRequest(tuple(p), SamplingParams(max_tokens=20), StopRule(frozenset({EOS}), 20))
        for p in prompts
    ]
    shape = TreeShape(nodes=8, depth=3, top_k=2, lookup=2)
    plain = decode_batch(target, requests)
    spec = decode_batch(target, requests, heads=heads, policy=TreePolicy(((4, shape),)))
    assert [o.token_ids for o in spec] == [o.token_ids for o in plain]
    assert target.feature_layers == (0,)
