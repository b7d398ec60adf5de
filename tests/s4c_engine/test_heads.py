"""Draft heads: identity start, teacher-forced shapes/targets, save/load round trip, mismatch."""

from __future__ import annotations

import pytest
import torch

from s4c_engine.errors import HeadsMismatchError
from s4c_engine.heads import IGNORE_INDEX, DraftHeads, HeadConfig
from tests.model_fixtures import tiny_model


@pytest.mark.parametrize("kind", ["s4c", "medusa"])
def test_new_heads_start_as_next_token_predictor(kind: str) -> None:
    model = tiny_model("llama")
    heads = DraftHeads.create(
        HeadConfig.for_target(model, "tiny", kind=kind, num_heads=3, draft_vocab_size=40), model
    )
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        logits = heads(hidden, ids)  # (K, B, T, Vd)
        expected = model.lm_head(hidden)[..., :40]
    assert logits.shape == (3, 2, 9, 40)
    for k in range(3):
        torch.testing.assert_close(logits[k], expected)


def test_s4c_head_depends_on_path_tokens_and_medusa_does_not() -> None:
    model = tiny_model("qwen2")
    for kind, should_differ in (("s4c", True), ("medusa", False)):
        heads = DraftHeads.create(
            HeadConfig.for_target(model, "tiny", kind=kind, draft_vocab_size=64), model
        )
        with torch.no_grad():
            for p in heads.parameters():
                p.add_(0.1 * torch.randn_like(p))
            h = torch.randn(1, 32)
            a = heads.head_logits(1, h, torch.tensor([[3, 4]]))
            b = heads.head_logits(1, h, torch.tensor([[3, 5]]))
        assert (not torch.allclose(a, b)) == should_differ


def test_training_targets_shift_and_mask() -> None:
    model = tiny_model("llama")
    heads = DraftHeads.create(
        HeadConfig.for_target(model, "tiny", num_heads=2, draft_vocab_size=10), model
    )
    ids = torch.tensor([[1, 5, 12, 7, 3]])
    targets = heads.training_targets(ids)
    # head 0 predicts ids[t+2]; 12 is outside the draft vocab (first 10 ids)
    assert targets[0, 0].tolist() == [IGNORE_INDEX, 7, 3, IGNORE_INDEX, IGNORE_INDEX]
    assert targets[1, 0].tolist() == [7, 3, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]


def test_save_load_round_trip_and_mismatch(tmp_path) -> None:
    model = tiny_model("llama")
    vocab = torch.randperm(64, generator=torch.Generator().manual_seed(1))[:20]
    heads = DraftHeads.create(
        HeadConfig.for_target(model, "tiny", num_heads=2, draft_vocab_size=20), model, vocab
    )
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(torch.randn_like(p))
    heads.save(tmp_path / "h")
    loaded = DraftHeads.load(tmp_path / "h", model, "tiny")
    h = torch.randn(3, 32)
    torch.testing.assert_close(
        loaded.head_logits(1, h, torch.tensor([[1, 2]] * 3)),
        heads.head_logits(1, h, torch.tensor([[1, 2]] * 3)),
    )
    assert torch.equal(loaded.draft_vocab, vocab)
    with pytest.raises(HeadsMismatchError, match="target_name"):
        DraftHeads.load(tmp_path / "h", model, "other-model")
    with pytest.raises(HeadsMismatchError, match="target_arch"):
        DraftHeads.load(tmp_path / "h", tiny_model("qwen2"), "tiny")
