"""Build the answer datastore from distilled answers and score it on held-out prompts.

Reads the index of one or more distillation directories (`distill` writes `prompt_ids` and
`answer_ids` per prompt), builds `AnswerDatastore` from the training split's answers (the
split is the heads' own: by hash of the prompt id, so validation prompts are never in it) and
replays every validation answer token by token: at each position, the chain each draft source
would graft (`chain` tokens) is compared with what the target actually said next. The report
gives, per source and per answer position, how often the source had a chain, how many tokens
it drafted (the tree nodes it costs) and how many of them would be accepted (greedy
verification accepts the longest agreeing prefix):
- `context`: the request's own n-gram lookup (`NgramLookup`, what the engine does without
  a datastore);
- `datastore`: the datastore alone;
- `context, else datastore`: one chain, the datastore's only where the context has none;
- `both`: the engine's rule, both chains in the tree, the datastore's only where it departs
  from the context's (`drafting.merge_chains`): the better of the two is accepted. (In the
  engine both also merge into the heads' nodes, which this replay leaves out.)

`python -m s4c_engine.training.datastore_build --data-dir DIR [--data-dir DIR ...]
--model-dir MODEL --out-dir OUT` (see --help).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from s4c_engine.datastore import AnswerDatastore
from s4c_engine.lookup import NgramLookup
from s4c_engine.training.data import is_validation, read_index

log = logging.getLogger(__name__)

REPORT_FILE = "datastore_report.json"
LEAD_TOKENS = 8  # prompt tokens kept before each answer (the assistant header and a little)


@dataclass(frozen=True)
class SourceScore:
    """One draft source replayed over validation answers."""

    source: str
    positions: int
    proposed: float  # share of positions with a non-empty chain
    drafted: float  # mean chain tokens per position (what the tree's lookup nodes cost)
    accepted: float  # mean accepted chain tokens per position


def collect(
    data_dirs: Sequence[Path], val_percent: float
) -> tuple[list[tuple[list[int], list[int]]], list[tuple[list[int], list[int]]]]:
    """(prompt_ids, answer_ids) of every distilled prompt, split into train and validation
    by prompt id; a prompt distilled in several directories counts once (first seen)."""
    seen: set[str] = set()
    train: list[tuple[list[int], list[int]]] = []
    val: list[tuple[list[int], list[int]]] = []
    for data_dir in data_dirs:
        for rec in read_index(Path(data_dir)):
            key = str(rec["id"])
            if key in seen:
                continue
            seen.add(key)
            pair = (list(rec["prompt_ids"]), list(rec["answer_ids"]))  # type: ignore[call-overload]
            (val if is_validation(key, val_percent) else train).append(pair)
    return train, val


def accepted_prefix(chain: Sequence[int], actual: Sequence[int]) -> int:
    """How many leading chain tokens equal what followed (what greedy verification keeps)."""
    n = 0
    for a, b in zip(chain, actual):
        if a != b:
            break
        n += 1
    return n


def replay(
    store: AnswerDatastore, pairs: Sequence[tuple[list[int], list[int]]], chain: int
) -> list[SourceScore]:
    """Score the draft sources (see the module docstring) over every answer position."""
    names = ("context", "datastore", "context, else datastore", "both")
    hits = dict.fromkeys(names, 0)
    sizes = dict.fromkeys(names, 0)
    gained = dict.fromkeys(names, 0)
    positions = 0
    for prompt, answer in pairs:
        look = NgramLookup(prompt)
        for i in range(len(answer) - 1):
            # The engine drafts after committing answer[: i + 1] (the root is answer[i]).
            look.extend(answer[len(look) - len(prompt) : i + 1])
            actual = answer[i + 1 : i + 1 + chain]
            ctx = look.propose(chain)
            ds = store.propose(look.tokens, chain)
            either = ctx or ds
            scores = {
                "context": (ctx, accepted_prefix(ctx, actual)),
                "datastore": (ds, accepted_prefix(ds, actual)),
                "context, else datastore": (either, accepted_prefix(either, actual)),
            }
            best = max(scores["context"][1], scores["datastore"][1])
            scores["both"] = (ctx + ds[accepted_prefix(ds, ctx) :], best)
            for name, (drafted, good) in scores.items():
                hits[name] += bool(drafted)
                sizes[name] += len(drafted)
                gained[name] += good
            positions += 1
    per = max(positions, 1)
    return [
        SourceScore(n, positions, hits[n] / per, sizes[n] / per, gained[n] / per) for n in names
    ]


def build_datastore(
    data_dirs: Sequence[Path],
    out_dir: Path,
    *,
    target_name: str,
    vocab_size: int,
    val_percent: float = 3.0,
    replay_chain: int = 6,
    **thresholds: Any,
) -> dict[str, object]:
    """Build from the training split, save to out_dir, replay the validation split; returns
    (and writes beside the datastore) the report. thresholds: `AnswerDatastore.build`'s
    min_ngram, max_ngram, max_chain, min_count, min_share (its defaults otherwise)."""
    start = time.perf_counter()
    train, val = collect(data_dirs, val_percent)
    if not train:
        raise ValueError("no training answers in the distillation directories")
    store = AnswerDatastore.build(
        [a for _, a in train],
        lead=[p[-LEAD_TOKENS:] for p, _ in train],
        target_name=target_name,
        vocab_size=vocab_size,
        **thresholds,
    )
    built = time.perf_counter() - start
    store.save(out_dir)
    scores = replay(store, val, replay_chain)
    report: dict[str, object] = {
        "data_dirs": [str(d) for d in data_dirs],
        "train_answers": len(train),
        "val_answers": len(val),
        "entries": {n: len(t) for n, t in store.tables.items()},
        "build_seconds": round(built, 1),
        "replay_chain": replay_chain,
        "replay": [vars(s) for s in scores],
    }
    (Path(out_dir) / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict[str, object]) -> str:
    lines = [
        f"datastore from {report['train_answers']} answers, entries per n {report['entries']}",
        f"replayed on {report['val_answers']} held-out answers, chains of "
        f"{report['replay_chain']} tokens:",
        "| source | positions | has a chain | drafted tokens | accepted tokens |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in report["replay"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {s['source']} | {s['positions']} | {s['proposed']:.3f} | {s['drafted']:.2f} "
            f"| {s['accepted']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description="Build the answer datastore from distilled answers (s4c_engine.datastore) "
        "and replay it on the held-out prompts' answers."
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        action="append",
        required=True,
        help="a distillation directory (repeatable)",
    )
    p.add_argument("--model-dir", type=Path, required=True, help="the target model directory")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--target-name", default=None, help="default: the model directory's name")
    p.add_argument("--val-percent", type=float, default=3.0)
    p.add_argument("--min-ngram", type=int, default=2)
    p.add_argument("--max-ngram", type=int, default=4)
    p.add_argument("--max-chain", type=int, default=8)
    p.add_argument("--min-count", type=int, default=2)
    p.add_argument("--min-share", type=float, default=0.3)
    p.add_argument("--replay-chain", type=int, default=6)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = json.loads((args.model_dir / "config.json").read_text())
    report = build_datastore(
        args.data_dir,
        args.out_dir,
        target_name=args.target_name or args.model_dir.name,
        vocab_size=int(config["vocab_size"]),
        val_percent=args.val_percent,
        min_ngram=args.min_ngram,
        max_ngram=args.max_ngram,
        max_chain=args.max_chain,
        min_count=args.min_count,
        min_share=args.min_share,
        replay_chain=args.replay_chain,
    )
    print(format_report(report))


if __name__ == "__main__":
    main()
