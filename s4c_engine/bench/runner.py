"""Run the benchmark: load the methods once, warm up, then run them interleaved prompt by prompt.

`run_bench(config)` returns the JSON-ready report (summaries + every record); `cli_main`
runs it, writes the JSON file and the Markdown table. Batch sizes above 1 rerun the same
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
from s4c_engine.bench.report import Record, markdown, summarize_batches, summarize_methods

log = logging.getLogger(__name__)

ALL_METHODS = ("hf", "hf-pld", "ar", "medusa", "s4c")
ENGINE_METHODS = ("ar", "medusa", "s4c")
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run (BENCHMARK.md). `prompts` None = Spec-Bench beside the repo."""

    model_dir: Path
    prompts: Path | None = None
    per_category: int | None = None
    methods: tuple[str, ...] = ALL_METHODS
    max_new_tokens: int = 128
    batch_sizes: tuple[int, ...] = (1,)
    batch_methods: tuple[str, ...] = ("hf", "s4c")
    json_out: Path | None = None
    s4c_heads: Path | None = None  # None: the heads shipped for the model
    medusa_heads: Path | None = None
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None
    prompt_lookup_num_tokens: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {', '.join(ALL_METHODS)}")
        if any(b < 1 for b in self.batch_sizes):
            raise ValueError("batch sizes must be >= 1")


@dataclass(frozen=True)
class Loaded:
    """The methods, built once: runner per name, the tokenizer side and the HF model."""

    runners: dict[str, MethodRunner]
    encode: Callable[[str], list[int]]
    eos_ids: frozenset[int]
    hf_model: torch.nn.Module
    engine_methods: dict[str, str] = field(default_factory=dict)  # asked -> effective


def load_methods(config: BenchConfig, methods: Sequence[str]) -> Loaded:
    """Load the HF model, the engines (one per head kind) and the prompt codec."""
    from transformers import AutoModelForCausalLM

    from s4c_engine.config import ChatMessage, Prompt
    from s4c_engine.prompting import PromptCodec

    codec = PromptCodec.load(config.model_dir)
    eos = frozenset(codec.eos_token_ids)
    dtype = getattr(torch, config.dtype)
    model = AutoModelForCausalLM.from_pretrained(str(config.model_dir), dtype=dtype)
    model.to(config.device).eval()
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
            )

        engines: dict[str, Any] = {}
        if "s4c" in wanted:
            engines["s4c"] = load("s4c", config.s4c_heads)
        if "medusa" in wanted:
            engines["medusa"] = load("medusa", config.medusa_heads)
        if "ar" in wanted:
            engines["ar"] = engines.get("s4c") or engines.get("medusa") or load("ar", None)
        for name in wanted:
            engine = engines[name]
            effective[name] = name if name == "ar" else str(engine.method)
            runners[name] = EngineRunner(name, engine, name, eos, m)

    def encode(text: str) -> list[int]:
        return codec.encode(Prompt(messages=(ChatMessage("user", text),)))

    return Loaded(runners, encode, eos, model, effective)


def divergence(
    model: torch.nn.Module, prompt: list[int], ref: tuple[int, ...], got: tuple[int, ...]
) -> dict[str, Any]:
    """Where `got` first differs from the reference and the target's top-2 logit margin there."""
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
    method: str,
    prompt_ids: list[int],
    g: Generated,
    batch_size: int,
    batch_index: int,
) -> Record:
    n = len(g.tokens)
    return {
        "prompt_id": p.id,
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


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Measure every method on every prompt (batch 1, interleaved), then the batch sizes."""
    if config.threads:
        torch.set_num_threads(config.threads)
    path = config.prompts or default_prompts_path(REPO_ROOT)
    prompts = first_per_category(read_bench_prompts(path), config.per_category)
    methods = [m for m in ALL_METHODS if m in config.methods]
    batch_sizes = sorted(set(config.batch_sizes))
    batch_methods = [m for m in config.batch_methods if m in methods and m != "hf-pld"]
    loaded = load_methods(config, methods)
    ids = [loaded.encode(p.turns[0]) for p in prompts]

    bar = tqdm(
        total=len(methods) * (len(prompts) + 1),
        desc="bench",
        unit="run",
        disable=not config.progress,
    )
    for m in methods:  # warm-up: one prompt through every method, not recorded
        loaded.runners[m].run([ids[0]])
        bar.update(1)
    records: list[Record] = []
    for i, (p, prompt_ids) in enumerate(zip(prompts, ids)):
        outs: dict[str, Generated] = {}
        for m in methods:
            bar.set_postfix(method=m, prompt=p.id)
            outs[m] = loaded.runners[m].run([prompt_ids])[0]
            bar.update(1)
        for m, g in outs.items():
            rec = _record(p, m, prompt_ids, g, 1, i)
            if "hf" in outs:
                ref = outs["hf"].tokens
                rec["exact_match_hf"] = g.tokens == ref
                if g.tokens != ref:
                    rec["divergence"] = divergence(loaded.hf_model, prompt_ids, ref, g.tokens)
            records.append(rec)
    bar.close()

    reference = {
        r["prompt_id"]: tuple(r["tokens"])
        for r in records
        if r["method"] == ("hf" if "hf" in methods else methods[0])
    }
    batch_records = (
        [dict(r) for r in records if r["method"] in batch_methods] if (1 in batch_sizes) else []
    )
    for size in [b for b in batch_sizes if b > 1]:
        chunks = [list(range(s, min(s + size, len(prompts)))) for s in range(0, len(prompts), size)]
        for index, chunk in enumerate(
            tqdm(chunks, desc=f"batch {size}", disable=not config.progress)
        ):
            for m in batch_methods:  # interleaved batch by batch
                outs = loaded.runners[m].run([ids[j] for j in chunk])
                for j, g in zip(chunk, outs):
                    batch_records.append(_record(prompts[j], m, ids[j], g, size, index))

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
