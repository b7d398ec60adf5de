"""`s4c train-heads` end to end on a tiny model: distil, train both kinds, export, resume,
build the answer datastore."""

from __future__ import annotations

import json
from pathlib import Path

from s4c_engine.config import Prompt, SamplingParams
from s4c_engine.engine import Engine
from s4c_engine.training.cli import TrainHeadsConfig, cli_main
from tests.s4c_engine.test_bench import write_tiny_model_dir


def test_recipe_exports_heads_the_engine_loads_and_reruns_resume(tmp_path: Path) -> None:
    model_dir = write_tiny_model_dir(tmp_path / "tiny-recipe")
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    for cat in ("qa", "code"):
        rows = [
            {"id": f"{cat}{i}", "category": cat, "prompt": f"{cat} question {i}?"}
            for i in range(10)
        ]
        (train_dir / f"{cat}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = TrainHeadsConfig(
        model_dir=model_dir,
        work_dir=tmp_path / "work",
        out_dir=tmp_path / "heads",
        train_dir=train_dir,
        samples=12,
        max_new_tokens=10,
        distill_batch_size=4,
        num_heads=2,
        draft_vocab_size=40,
        steps=6,
        batch_size=16,
        datastore=True,
    )
    results = cli_main(config)
    assert [r.steps for r in results] == [6, 6]
    index = (tmp_path / "work" / "distill" / "index.jsonl").read_text().splitlines()
    assert len(index) == 12
    assert {json.loads(x)["category"] for x in index} == {"qa", "code"}

    again = cli_main(config)  # everything done: nothing regenerated, training resumes at the end
    assert len((tmp_path / "work" / "distill" / "index.jsonl").read_text().splitlines()) == 12
    assert [r.evaluation for r in again] == [r.evaluation for r in results]

    prompt = [Prompt(text="qa question 3?")]
    params = [SamplingParams(max_tokens=10)]
    for kind in ("s4c", "medusa"):
        engine = Engine.load(model_dir, heads_path=tmp_path / "heads" / kind, method=kind)
        assert engine.method == kind
        spec = engine.generate(prompt, params)[0]
        plain = engine.generate(prompt, params, method="ar")[0]
        assert spec.token_ids == plain.token_ids

    # The answer datastore was built from the same answers and exported beside the heads.
    report = json.loads((tmp_path / "heads" / "datastore" / "datastore_report.json").read_text())
    assert report["train_answers"] + report["val_answers"] == 12
    with_store = Engine.load(
        model_dir,
        heads_path=tmp_path / "heads" / "s4c",
        datastore_path=tmp_path / "heads" / "datastore",
    )
    assert with_store.datastore is not None
    assert with_store.datastore.config.sequences == report["train_answers"]
    spec = with_store.generate(prompt, params)[0]
    assert spec.token_ids == with_store.generate(prompt, params, method="ar")[0].token_ids
