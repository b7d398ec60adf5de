"""Run the benchmark: load the methods once, warm up, then run them interleaved prompt by prompt.

`run_bench(config)` returns the JSON-ready report (summaries + every record); `cli_main`
runs it, writes the JSON file and the Markdown table. With `turns` > 1 each method answers a
question's later turns after its own earlier answers. Batch sizes above 1 rerun the same
prompts in batches for the methods in `batch_methods` (issue 5's `batches` section).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from s4c_engine.bench.methods import EngineRunner, Generated, HFRunner, MethodRunner
from s4c_engine.bench.prompts import (
    BenchPrompt,
    default_prompts_path,
    first_per_category,
    read_bench_prompts,
)
from s4c_engine.bench.report import (
    Record,
    markdown,
    summarize_batches,
    summarize_methods,
    summarize_turns,
)
from s4c_engine.config import ChatMessage

log = logging.getLogger(__name__)

ALL_METHODS = ("hf", "hf-pld", "ar", "medusa", "s4c")
# Ablations of s4c (not run by default): its heads without lookup chains; lookup chains
# (context, and the answer datastore's when --datastore is given) without heads; s4c without
# the answer datastore; each with the same tree budgets as s4c.
ABLATIONS = ("s4c-heads", "lookup", "s4c-no-store")
ENGINE_METHODS = ("ar", "medusa", "s4c", *ABLATIONS)
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run (BENCHMARK.md). `prompts` None = Spec-Bench beside the repo.

    `turns` caps the turns asked per question (Spec-Bench's MT-bench rows have 2, the other
    rows and plain JSONL prompts 1, so they are asked once whatever `turns` says).
    """

    model_dir: Path
    prompts: Path | None = None
    per_category: int | None = None
    turns: int = 1
    methods: tuple[str, ...] = ALL_METHODS
    max_new_tokens: int = 128
    batch_sizes: tuple[int, ...] = (1,)
    batch_methods: tuple[str, ...] = ("hf", "s4c")
    json_out: Path | None = None
    s4c_heads: Path | None = None  # None: the heads shipped for the model
    medusa_heads: Path | None = None
    datastore: Path | None = None  # an answer datastore for s4c (and its ablations); None: none
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None
    prompt_lookup_num_tokens: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in (*ALL_METHODS, *ABLATIONS)]
        if unknown:
            known = ", ".join((*ALL_METHODS, *ABLATIONS))
            raise ValueError(f"unknown methods {unknown}; choose from {known}")
        if any(b < 1 for b in self.batch_sizes):
            raise ValueError("batch sizes must be >= 1")
        if self.turns < 1:
            raise ValueError("turns must be >= 1")


@dataclass(frozen=True)
class Loaded:
    """The methods, built once: runner per name, the tokenizer side and the HF model.

    `encode` renders a chat with the model's template (generation prompt appended); `decode`
    turns an answer's ids back into the text a later turn quotes.
    """

    runners: dict[str, MethodRunner]
    encode: Callable[[tuple[ChatMessage, ...]], list[int]]
    decode: Callable[[Sequence[int]], str]
    eos_ids: frozenset[int]
    hf_model: torch.nn.Module
    engine_methods: dict[str, str] = field(default_factory=dict)  # asked -> effective


def load_methods(config: BenchConfig, methods: Sequence[str]) -> Loaded:
    """Load the HF model, the engines (one per head kind) and the prompt codec."""
    from transformers import AutoModelForCausalLM

    from s4c_engine.config import Prompt
    from s4c_engine.prompting import PromptCodec

    codec = PromptCodec.load(config.model_dir)
    eos = frozenset(codec.eos_token_ids)
    dtype = getattr(torch, config.dtype)
    model = AutoModelForCausalLM.from_pretrained(str(config.model_dir), dtype=dtype)
    # transformers wraps PreTrainedModel.to with functools.wraps, which mypy binds as unbound
    model.to(config.device).eval()  # type: ignore[arg-type]
    pad = model.generation_config.pad_token_id
    pad_id = int(pad if pad is not None else min(eos))
    m = config.max_new_tokens
    runners: dict[str, MethodRunner] = {}
    if "hf" in methods:
        runners["hf"] = HFRunner("hf", model, eos, pad_id, m)
    if "hf-pld" in methods:
        runners["hf-pld"] = HFRunner(
            "hf-pld", model, eos, pad_id, m, config.prompt_lookup_num_tokens
        )
    effective: dict[str, str] = {}
    wanted = [x for x in ENGINE_METHODS if x in methods]
    if wanted:
        from s4c_engine.engine import Engine

        def load(method: str, heads: Path | None) -> Any:
            return Engine.load(
                config.model_dir,
                heads_path=heads,
                method=method,  # type: ignore[arg-type]
                device=config.device,
                dtype=config.dtype,
                max_batch_size=64,
                datastore_path=config.datastore if method == "s4c" else None,
            )

        engines: dict[str, Any] = {}
        if any(x in wanted for x in ("s4c", *ABLATIONS)):
            engines["s4c"] = load("s4c", config.s4c_heads)
        for name, variant in (
            ("s4c-heads", "without_lookup"),
            ("lookup", "lookup_only"),
            ("s4c-no-store", None),
        ):
            if name in wanted:
                base = engines["s4c"]
                policy = getattr(base.policy, variant)() if variant else base.policy
                engines[name] = Engine(
                    base.target,
                    base.codec,
                    base.info,
                    base.heads,
                    policy,
                    base.max_batch_size,
                    None if name == "s4c-no-store" else base.datastore,
                )
        if "medusa" in wanted:
            engines["medusa"] = load("medusa", config.medusa_heads)
        if "ar" in wanted:
            engines["ar"] = engines.get("s4c") or engines.get("medusa") or load("ar", None)
        for name in wanted:
            engine = engines[name]
            effective[name] = name if name in ("ar", *ABLATIONS) else str(engine.method)
            method = "s4c" if name in ABLATIONS else name
            runners[name] = EngineRunner(name, engine, method, eos, m)

    def encode(messages: tuple[ChatMessage, ...]) -> list[int]:
        return codec.encode(Prompt(messages=messages))

    def decode(ids: Sequence[int]) -> str:
        # As Spec-Bench (FastChat): special tokens dropped, surrounding whitespace stripped.
        return codec.decode(ids).strip()

    return Loaded(runners, encode, decode, eos, model, effective)


def conversation(p: BenchPrompt, answers: Sequence[str]) -> tuple[ChatMessage, ...]:
    """The chat that asks `p`'s next turn: [user t1, assistant a1, ..., user t(k+1)] for the
    k = len(answers) answers given so far. IndexError if `p` has no turn k+1."""
    messages: list[ChatMessage] = []
    for question, answer in zip(p.turns, answers):
        messages += [ChatMessage("user", question), ChatMessage("assistant", answer)]
    return (*messages, ChatMessage("user", p.turns[len(answers)]))


def turns_asked(p: BenchPrompt, turns: int) -> int:
    """How many of `p`'s turns a run with `--turns turns` asks."""
    return min(turns, len(p.turns))


def divergence(
    model: torch.nn.Module, prompt: list[int], ref: tuple[int, ...], got: tuple[int, ...]
) -> dict[str, Any]:
    """Where `got` first differs from the reference and the target's top-2 logit margin there,
    both continuing `prompt` (the method's own prompt: on a later turn it quotes the method's
    earlier answers, which may already differ from the reference's)."""
    pos = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
    ids = torch.tensor([prompt + list(ref[:pos])], device=next(model.parameters()).device)
    with torch.inference_mode():
        logits = model(ids).logits[0, -1].float()
    top = logits.topk(2)
    info: dict[str, Any] = {
        "position": pos,
        "ref_token": ref[pos] if pos < len(ref) else None,
        "method_token": got[pos] if pos < len(got) else None,
        "top2_logit_margin": float(top.values[0] - top.values[1]),
    }
    if info["ref_token"] is not None and info["method_token"] is not None:
        info["ref_minus_method_logit"] = float(logits[ref[pos]] - logits[got[pos]])
    return info


def _record(
    p: BenchPrompt,
    turn: int,
    method: str,
    prompt_ids: list[int],
    g: Generated,
    batch_size: int,
    batch_index: int,
) -> Record:
    n = len(g.tokens)
    return {
        "prompt_id": p.id,
        "turn": turn,
        "category": p.category,
        "subcategory": p.subcategory,
        "method": method,
        "batch_size": batch_size,
        "batch_index": batch_index,
        "prompt_tokens": len(prompt_ids),
        "new_tokens": n,
        "seconds": g.seconds,
        "tokens_per_s": n / g.seconds if g.seconds > 0 else 0.0,
        "target_forwards": g.target_forwards,
        "accepted_per_depth": list(g.accepted_per_depth),
        "attempted_per_depth": list(g.attempted_per_depth),
        "tree_nodes": g.tree_nodes,
        "peak_rss_mb": g.peak_rss_mb,
        "tokens": list(g.tokens),
    }


def run_interleaved(
    loaded: Loaded, prompts: list[BenchPrompt], methods: list[str], turns: int, bar: tqdm
) -> list[Record]:
    """Batch 1: every method on each prompt in turn (A B A B ...), then on its next turn,
    each method after its own earlier answers. One record per (prompt, turn, method), with
    exact match against hf's answer to the same turn when hf runs."""
    records: list[Record] = []
    index = 0  # one per (prompt, turn): a batch of one
    for p in prompts:
        answers: dict[str, list[str]] = {m: [] for m in methods}
        for turn in range(1, turns_asked(p, turns) + 1):
            asked = {m: loaded.encode(conversation(p, answers[m])) for m in methods}
            outs: dict[str, Generated] = {}
            for m in methods:
                bar.set_postfix(method=m, prompt=p.id, turn=turn)
                outs[m] = loaded.runners[m].run([asked[m]])[0]
                bar.update(1)
            for m, g in outs.items():
                answers[m].append(loaded.decode(g.tokens))
                rec = _record(p, turn, m, asked[m], g, 1, index)
                if "hf" in outs:
                    ref = outs["hf"].tokens
                    rec["exact_match_hf"] = g.tokens == ref
                    if g.tokens != ref:
                        rec["divergence"] = divergence(loaded.hf_model, asked[m], ref, g.tokens)
                records.append(rec)
            index += 1
    return records


def run_batches(
    loaded: Loaded,
    prompts: list[BenchPrompt],
    methods: list[str],
    turns: int,
    size: int,
    progress: bool,
) -> list[Record]:
    """The same prompts in batches of `size`, methods interleaved batch by batch; turn k+1
    is batched after every turn k, each method continuing from its own answers of this run."""
    records: list[Record] = []
    answers: dict[str, list[list[str]]] = {m: [[] for _ in prompts] for m in methods}
    index = 0
    for turn in range(1, turns + 1):
        asking = [j for j, p in enumerate(prompts) if turns_asked(p, turns) >= turn]
        chunks = [asking[s : s + size] for s in range(0, len(asking), size)]
        desc = f"batch {size}" + (f" turn {turn}" if turns > 1 else "")
        for chunk in tqdm(chunks, desc=desc, disable=not progress):
            for m in methods:
                asked = [loaded.encode(conversation(prompts[j], answers[m][j])) for j in chunk]
                outs = loaded.runners[m].run(asked)
                for j, prompt_ids, g in zip(chunk, asked, outs):
                    answers[m][j].append(loaded.decode(g.tokens))
                    records.append(_record(prompts[j], turn, m, prompt_ids, g, size, index))
            index += 1
    return records


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Measure every method on every prompt (batch 1, interleaved), then the batch sizes."""
    if config.threads:
        torch.set_num_threads(config.threads)
    path = config.prompts or default_prompts_path(REPO_ROOT)
    prompts = first_per_category(read_bench_prompts(path), config.per_category)
    methods = [m for m in (*ALL_METHODS, *ABLATIONS) if m in config.methods]
    batch_sizes = sorted(set(config.batch_sizes))
    batch_methods = [m for m in config.batch_methods if m in methods and m != "hf-pld"]
    loaded = load_methods(config, methods)

    runs = sum(turns_asked(p, config.turns) for p in prompts)
    bar = tqdm(
        total=len(methods) * (runs + 1), desc="bench", unit="run", disable=not config.progress
    )
    warm_up = loaded.encode(conversation(prompts[0], ()))
    for m in methods:  # warm-up: one prompt through every method, not recorded
        loaded.runners[m].run([warm_up])
        bar.update(1)
    records = run_interleaved(loaded, prompts, methods, config.turns, bar)
    bar.close()

    ref_method = "hf" if "hf" in methods else methods[0]
    reference = {
        (r["prompt_id"], r["turn"]): tuple(r["tokens"])
        for r in records
        if r["method"] == ref_method
    }
    batch_records = (
        [dict(r) for r in records if r["method"] in batch_methods] if (1 in batch_sizes) else []
    )
    for size in [b for b in batch_sizes if b > 1]:
        batch_records += run_batches(
            loaded, prompts, batch_methods, config.turns, size, config.progress
        )

    return {
        "command": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "prompts_file": str(path),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": config.device,
            "dtype": config.dtype,
        },
        "engine_methods": loaded.engine_methods,
        "turns": summarize_turns(records, config.turns),
        "methods": summarize_methods(records, methods),
        "batches": summarize_batches(batch_records, reference) if batch_records else {},
        "records": records + [r for r in batch_records if r["batch_size"] > 1],
    }


def cli_main(config: BenchConfig) -> dict[str, Any]:
    """What `s4c bench` runs: the benchmark, the JSON file (if asked) and the table on stdout."""
    report = run_bench(config)
    if config.json_out is not None:
        config.json_out.parent.mkdir(parents=True, exist_ok=True)
        config.json_out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(markdown(report))
    return report
