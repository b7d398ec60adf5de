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
from s4c_engine.engine import Engine
from s4c_engine.heads import DraftHeads, HeadConfig
from s4c_engine.kv_cache import RowKVCache
from s4c_engine.target import Target

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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine.load(args.model_dir, heads_path=args.heads, method="s4c")
    if not args.skip_forward:
        sizes = [int(t) for t in args.tokens.split(",")]
        print("forward ms at KV 300; columns = tokens per row:", sizes)
        for b in (int(x) for x in args.batches.split(",")):
            row = [forward_ms(engine.target, b, t) for t in sizes]
            print(f"  B={b:>2}: " + "  ".join(f"{ms:7.1f}" for ms in row))
    if engine.heads is None:
        model = engine.target.model
        config = HeadConfig.for_target(model, engine.info.name)
        engine.heads = DraftHeads.create(config, model).eval()
        print("using untrained (identity-start) s4c heads")
    end_to_end(engine, args.max_tokens, args.prompts)


if __name__ == "__main__":
    main()
