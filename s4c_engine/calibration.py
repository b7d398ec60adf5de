"""Measure what a tree costs on this machine, and what speculation buys end to end.

`python -m s4c_engine.calibration --model-dir DIR [--heads DIR]` prints
(1) target forward time by batch size and tokens per row at a fixed KV length (the numbers the
TreePolicy table is chosen from) and (2) tau and tokens/s of plain vs speculative greedy
decoding on a few chat prompts. A measuring tool, not part of the decode path; not a test.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from s4c_engine.attention import build_step_mask
from s4c_engine.config import ChatMessage, Prompt, SamplingParams
from s4c_engine.decoding import decode_batch
from s4c_engine.drafting import TreeShape
from s4c_engine.engine import Engine
from s4c_engine.heads import DraftHeads, HeadConfig
from s4c_engine.kv_cache import RowKVCache
from s4c_engine.target import Target
from s4c_engine.tree_policy import PLAIN_POLICY, TreePolicy

PROMPTS = [
    "Explain how a bicycle gear system works.",
    "Write a short story about a robot learning to paint.",
    "What are the main causes of inflation? Answer in a paragraph.",
    "Give me a recipe for pancakes.",
]


@torch.inference_mode()
def forward_ms(
    target: Target, batch: int, tokens: int, kv_length: int = 300, repeats: int = 5
) -> float:
    """Mean ms of one target forward of `tokens` new tokens per row after kv_length."""
    cache = RowKVCache.allocate(
        target.config, batch, kv_length + tokens + 1, device=target.device, dtype=target.dtype
    )
    cache.advance([kv_length] * batch)
    ids = torch.randint(0, 1000, (batch, tokens), device=target.device)
    block = torch.ones(tokens, tokens, dtype=torch.bool, device=target.device).tril()
    positions = cache.lengths[:, None] + torch.arange(tokens, device=target.device)

    def run() -> None:
        s = cache.begin_forward(tokens)
        mask = build_step_mask(cache.lengths, s, block, target.dtype)
        target.forward(ids, positions, mask, cache)

    run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    if target.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1000


def end_to_end(engine: Engine, max_tokens: int, count: int) -> None:
    """Batch-1 greedy tau and tokens/s, plain vs speculative, on `count` chat prompts."""
    prompts = [Prompt(messages=(ChatMessage("user", q),)) for q in PROMPTS[:count]]
    params = [SamplingParams(max_tokens=max_tokens)]
    for method in ("ar", None):
        tokens, seconds, forwards = 0, 0.0, 0
        for p in prompts:
            start = time.perf_counter()
            result = engine.generate([p], params, method=method)[0]
            seconds += time.perf_counter() - start
            tokens += result.stats.completion_tokens
            forwards += result.stats.target_forwards
        name = method or engine.method
        print(
            f"{name:>6}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s, "
            f"tau {tokens / forwards:.2f}"
        )


def held_out_prompts(train_dir: Path, count: int, val_percent: float = 3.0) -> list[Prompt]:
    """`count` training prompts from the heads' validation split (never trained on), spread
    over the categories; never Spec-Bench, so tree sizes are not tuned to the benchmark."""
    from s4c_engine.training.data import is_validation
    from s4c_engine.training.prompts import balanced_mix, read_train_prompts

    rows = [r for r in balanced_mix(read_train_prompts(train_dir), 10**9, 0)]
    held = [r for r in rows if is_validation(r.id, val_percent) and len(r.prompt) < 3000]
    return [Prompt(messages=(ChatMessage("user", r.prompt),)) for r in held[:count]]


def sweep(
    engine: Engine,
    prompts: list[Prompt],
    policies: dict[str, TreePolicy],
    batch_size: int,
    max_tokens: int,
) -> None:
    """Greedy tokens/s and tau of fixed trees (no tuner) vs plain decoding, batches of
    `batch_size` prompts, every candidate interleaved batch by batch."""
    params = [SamplingParams(max_tokens=max_tokens)] * batch_size
    totals = {name: [0, 0.0, 0] for name in ["plain", *policies]}
    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    target, heads = engine.target, engine.heads
    for group in batches:
        requests = [engine.request(i, p, sp) for i, (p, sp) in enumerate(zip(group, params))]
        for name in totals:
            policy = policies.get(name, PLAIN_POLICY)
            start = time.perf_counter()
            outs = decode_batch(
                target,
                requests,
                heads=heads if name != "plain" else None,
                policy=policy,
                adaptive=False,
            )
            totals[name][1] += time.perf_counter() - start
            totals[name][0] += sum(len(o.token_ids) for o in outs)
            totals[name][2] += sum(o.stats.target_forwards for o in outs)
    base = totals["plain"][0] / totals["plain"][1]
    for name, (tokens, seconds, forwards) in totals.items():
        rate = tokens / seconds
        print(
            f"  B={batch_size:<2} {name:<28} {rate:6.1f} tok/s  {rate / base:5.2f}x  "
            f"tau {tokens / forwards:4.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--heads", type=Path, default=None, help="default: random heads")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--tokens", default="1,4,8,12,16,24")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--skip-forward", action="store_true")
    parser.add_argument(
        "--sweep",
        default=None,
        help="tree shapes to compare on held-out training prompts, ';'-separated "
        "nodes/depth/top_k/lookup/min_prob, e.g. '8/4/2/3/0.2;16/5/3/6/0.1'",
    )
    parser.add_argument("--sweep-batch", type=int, default=1)
    parser.add_argument("--train-dir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine.load(args.model_dir, heads_path=args.heads, method="s4c")
    if not args.skip_forward:
        sizes = [int(t) for t in args.tokens.split(",")]
        print("forward ms at KV 300; columns = tokens per row:", sizes)
        for b in (int(x) for x in args.batches.split(",")):
            row = [forward_ms(engine.target, b, t) for t in sizes]
            print(f"  B={b:>2}: " + "  ".join(f"{ms:7.1f}" for ms in row))
    if args.sweep:
        if args.train_dir is None:
            parser.error("--sweep needs --train-dir (held-out training prompts)")
        shapes = {}
        for spec in args.sweep.split(";"):
            n, d, k, look, floor = spec.split("/")
            shapes[spec] = TreePolicy(
                ((64, TreeShape(int(n), int(d), int(k), lookup=int(look), min_prob=float(floor))),)
            )
        prompts = held_out_prompts(args.train_dir, args.prompts)
        sweep(engine, prompts, shapes, args.sweep_batch, args.max_tokens)
        return
    if engine.heads is None:
        model = engine.target.model
        config = HeadConfig.for_target(model, engine.info.name)
        engine.heads = DraftHeads.create(config, model).eval()
        print("using untrained (identity-start) s4c heads")
    end_to_end(engine, args.max_tokens, args.prompts)


if __name__ == "__main__":
    main()
