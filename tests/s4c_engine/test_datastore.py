"""Answer datastore: modal chains, longest match first, files, and the replay report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s4c_engine.datastore import AnswerDatastore
from s4c_engine.errors import HeadsMismatchError
from s4c_engine.training.datastore_build import accepted_prefix, build_datastore, collect


def _store(seqs: list[list[int]], **kw: object) -> AnswerDatastore:
    return AnswerDatastore.build(seqs, target_name="t", vocab_size=100, **kw)  # type: ignore[arg-type]


def test_chain_is_the_modal_continuation_cut_where_answers_stop_agreeing() -> None:
    store = _store(
        [[1, 2, 3, 4, 5], [1, 2, 3, 4, 6], [1, 2, 3, 7, 8], [9, 9]],
        min_ngram=2,
        max_ngram=2,
        max_chain=4,
        min_count=2,
        min_share=0.5,
    )
    # (1, 2) seen 3 times: 3 always follows (3/3), then 4 (2/3 >= 0.5), then 5 or 6 (1/3 each):
    # the chain stops there.
    assert store.propose([7, 1, 2], 8) == [3, 4]
    assert store.propose([7, 1, 2], 1) == [3]
    # (2, 3) seen 3 times: 4 twice; after it 5 and 6 once each (below min_count 2).
    assert store.propose([2, 3], 8) == [4]
    # (3, 7) seen once: below min_count, not stored; (9, 9) is never followed by anything.
    assert store.propose([3, 7], 8) == []
    assert store.propose([9, 9], 8) == []
    # Too short a suffix.
    assert store.propose([2], 8) == []


def test_longest_known_suffix_wins() -> None:
    seqs = [[5, 1, 2, 3]] * 2 + [[6, 1, 2, 4]] * 3
    store = _store(seqs, min_ngram=2, max_ngram=3, min_share=0.3)
    assert store.propose([6, 1, 2], 4) == [4]  # (1, 2) alone says 4 (3 of 5) ...
    assert store.propose([5, 1, 2], 4) == [3]  # ... but (5, 1, 2) was always followed by 3
    assert store.propose([8, 1, 2], 4) == [4]  # unknown trigram: the bigram's answer


def test_lead_keys_the_first_answer_tokens_but_is_never_drafted() -> None:
    answers = [[10, 11, 12], [10, 11, 13], [10, 11, 12]]
    lead = [[40, 41, 42]] * 3
    store = _store(answers, lead=lead, min_ngram=2, max_ngram=2, min_share=0.5)
    assert store.propose([0, 41, 42], 4) == [10, 11, 12]
    assert store.propose([40, 41], 4) == []  # a continuation must be answer tokens


def test_files_round_trip_and_are_checked_against_the_target(tmp_path: Path) -> None:
    store = _store([[1, 2, 3, 4]] * 3 + [[1, 2, 5]] * 2, min_ngram=1, max_ngram=3)
    store.save(tmp_path / "ds")
    loaded = AnswerDatastore.load(tmp_path / "ds", "t", 100)
    assert loaded.tables == store.tables and len(loaded) == len(store) > 0
    assert loaded.config == store.config
    with pytest.raises(HeadsMismatchError, match="built for 't'"):
        AnswerDatastore.load(tmp_path / "ds", "other", 100)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        _store([[1, 200]])


def test_build_from_distilled_indexes_holds_out_validation_and_reports(tmp_path: Path) -> None:
    data = tmp_path / "distill"
    data.mkdir()
    lines = []
    for i in range(60):
        answer = [20, 21, 22, 23, 24] if i % 3 else [20, 21, 30, 31]
        lines.append({"id": f"p{i}", "prompt_ids": [1, 2, 3], "answer_ids": answer})
    (data / "index.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    train, val = collect([data, data], val_percent=20.0)
    assert len(train) + len(val) == 60 and val  # the second directory repeats ids: once
    report = build_datastore(
        [data], tmp_path / "out", target_name="t", vocab_size=100, val_percent=20.0
    )
    assert (tmp_path / "out" / "datastore.npz").is_file()
    scores = {s["source"]: s for s in report["replay"]}  # type: ignore[attr-defined]
    # The prompt never contains the answers' n-grams at the first answer position, so the
    # datastore drafts where the context cannot, and the engine's rule gains from it.
    assert scores["datastore"]["accepted"] > scores["context"]["accepted"]
    assert scores["context, else datastore"]["accepted"] >= scores["context"]["accepted"]
    both = scores["both"]
    assert both["accepted"] >= max(scores["context"]["accepted"], scores["datastore"]["accepted"])
    # A shared start is drafted once.
    assert both["drafted"] <= scores["context"]["drafted"] + scores["datastore"]["drafted"]
    assert accepted_prefix([1, 2, 9], [1, 2, 3]) == 2


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_ngram"):
        _store([[1, 2]], min_ngram=3, max_ngram=2)
    with pytest.raises(ValueError, match="min_share"):
        _store([[1, 2]], min_share=0.0)


def test_decoding_with_a_datastore_is_exact_and_uses_its_chains() -> None:
    import torch

    from s4c_engine.config import SamplingParams
    from s4c_engine.decoding import DecodeRequest, decode_batch
    from s4c_engine.stopping import StopRule
    from s4c_engine.target import Target
    from s4c_engine.tree_policy import CPU_POLICY
    from tests.model_fixtures import random_heads, tiny_model

    model = tiny_model("llama", seed=4)
    target = Target(model)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 64, (9,), generator=gen).tolist() for _ in range(4)]

    def requests() -> list[DecodeRequest]:
        # Short answers: a random tiny model soon repeats itself, which the context lookup
        # drafts as well; the first tokens after a random prompt only a datastore can know.
        p = SamplingParams(max_tokens=8)
        return [DecodeRequest(tuple(x), p, StopRule(frozenset(), 8)) for x in prompts]

    plain = [list(o.token_ids) for o in decode_batch(target, requests())]
    # What this target says after these prompts: a datastore that knows it (keyed with the
    # prompts' last tokens, as the builder does).
    knows = AnswerDatastore.build(
        plain * 2, lead=[p[-4:] for p in prompts] * 2, target_name="t", vocab_size=64,
        min_count=2, max_chain=8,
    )  # fmt: skip
    # A datastore of other text: its chains are drafted and rejected.
    wrong = AnswerDatastore.build(
        [[(t + 1) % 64 for t in s] for s in plain] * 2, target_name="t", vocab_size=64
    )
    only = CPU_POLICY.lookup_only()
    taus = {}
    for name, store in (("none", None), ("knows", knows), ("wrong", wrong)):
        outs = decode_batch(  # one row at a time: the batch-1 tree, 6 lookup nodes
            target, requests(), policy=only, adaptive=False, datastore=store, max_batch_size=1
        )
        assert [list(o.token_ids) for o in outs] == plain, name
        taus[name] = sum(o.stats.tau for o in outs) / len(outs)
    heads = random_heads(model, "s4c")
    outs = decode_batch(
        target, requests(), heads=heads, policy=CPU_POLICY, adaptive=False, datastore=knows
    )
    assert [list(o.token_ids) for o in outs] == plain
    # The datastore that knows the answers drafts them where the context has no match.
    assert taus["knows"] > taus["none"] + 1.0, taus
    assert taus["knows"] > taus["wrong"], taus
