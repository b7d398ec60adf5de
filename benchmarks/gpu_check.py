"""`make gpu-check`: the engine on a CUDA device in fp32, bf16 and fp16, and what it measured.

1. Runs the engine tests marked `gpu` (`pytest tests/s4c_engine -m gpu`).
2. For each dtype, on the default model: speculative greedy (s4c, medusa) vs plain greedy
   (`ar`) and vs `transformers` greedy on a few fixed prompts: exact-match rate, tokens/s,
   tau, speedup. fp32 must match exactly; bf16/fp16 may flip near-tied tokens, so their
   match rate is printed, not asserted.
Exit status: 0 when every fp32 check matched and the tests passed, 1 otherwise, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = (
    "Write a Python function that checks whether a string is a palindrome.",
    "A farmer has 17 sheep and buys 5 more, then sells 8. How many sheep are left?",
    "Translate German to English: Das Wetter ist heute sehr schön.",
    "Explain in three sentences why the sky is blue.",
    "Who wrote the novel Pride and Prejudice?",
    "Summarize: The city council met on Tuesday to discuss the new park. Residents asked for "
    "more trees and a playground, and the council agreed to fund both next year.",
)


def run_tests() -> bool:
    """The engine tests selected for a GPU; True when pytest passed (or had nothing to run)."""
    cmd = [sys.executable, "-m", "pytest", "tests/s4c_engine", "-m", "gpu", "-q", "-x"]
    print("$", " ".join(cmd), flush=True)
    code = subprocess.call(cmd, cwd=REPO)
    print(f"pytest exit status {code}", flush=True)
    return code in (0, 5)  # 5 = no tests collected


def measure(model_dir: Path, dtype: str, max_new_tokens: int) -> dict[str, object]:
    """Greedy outputs and timings of hf, ar, medusa and s4c for PROMPTS in `dtype` on CUDA."""
    import torch
    from transformers import AutoModelForCausalLM

    from s4c_engine.config import ChatMessage, Prompt, SamplingParams
    from s4c_engine.engine import Engine

    prompts = [Prompt(messages=(ChatMessage("user", p),)) for p in PROMPTS]
    params = [SamplingParams(max_tokens=max_new_tokens, temperature=0.0)] * len(prompts)
    out: dict[str, object] = {"dtype": dtype}
    engines = {
        k: Engine.load(model_dir, method=k, device="cuda", dtype=dtype)  # type: ignore[arg-type]
        for k in ("s4c", "medusa")
    }
    codec = engines["s4c"].codec
    eos = set(codec.eos_token_ids)
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
    hf.to("cuda").eval()

    def hf_generate(ids: list[int]) -> tuple[int, ...]:
        with torch.inference_mode():
            seq = hf.generate(
                torch.tensor([ids], device="cuda"),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=sorted(eos),
            )
        toks = []
        for t in seq[0, len(ids) :].tolist():
            toks.append(t)
            if t in eos:
                break
        return tuple(toks)

    def timed(fn):  # type: ignore[no-untyped-def]
        fn()  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        return result, time.perf_counter() - start

    ids = [codec.encode(p) for p in prompts]
    ref, hf_s = timed(lambda: [hf_generate(x) for x in ids])
    runs = {
        "ar": timed(
            lambda: [engines["s4c"].generate([p], [params[0]], method="ar")[0] for p in prompts]
        ),
        "medusa": timed(lambda: [engines["medusa"].generate([p], [params[0]])[0] for p in prompts]),
        "s4c": timed(lambda: [engines["s4c"].generate([p], [params[0]])[0] for p in prompts]),
    }
    hf_tokens = sum(len(r) for r in ref)
    out["hf"] = {"tokens_per_s": hf_tokens / hf_s}
    for name, (results, seconds) in runs.items():
        tokens = sum(len(r.token_ids) for r in results)
        forwards = sum(r.stats.target_forwards for r in results)
        matches = sum(tuple(r.token_ids) == want for r, want in zip(results, ref))
        out[name] = {
            "effective_method": engines.get(name, engines["s4c"]).method if name != "ar" else "ar",
            "exact_match_vs_hf": matches / len(ref),
            "tokens_per_s": tokens / seconds,
            "speedup_vs_hf": (tokens / seconds) / (hf_tokens / hf_s),
            "tau": tokens / forwards if forwards else None,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--model-dir",
        type=Path,
        default=Path.home() / ".cache" / "s4c" / "models" / "SmolLM2-135M-Instruct",
    )
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--skip-tests", action="store_true")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA device visible (torch.cuda.is_available() is False); "
            "run this on a GPU machine."
        )
        return 2
    print(
        f"device: {torch.cuda.get_device_name()} | torch {torch.__version__} | "
        f"CUDA {torch.version.cuda}",
        flush=True,
    )
    ok = True if args.skip_tests else run_tests()
    if not (args.model_dir / "config.json").is_file():
        from s4c_engine.model_store import fetch_default_model

        args.model_dir = fetch_default_model(args.model_dir.parents[1])
    dtypes = ["float32", "bfloat16", "float16"]
    print("\n| dtype | method | tok/s | speedup vs hf | tau | exact match vs hf |")
    print("|---|---|---:|---:|---:|---:|")
    for dtype in dtypes:
        m = measure(args.model_dir, dtype, args.max_new_tokens)
        print(f"| {dtype} | hf | {m['hf']['tokens_per_s']:.1f} | 1.00x | 1.00 | 1.00 |")  # type: ignore[index]
        for name in ("ar", "medusa", "s4c"):
            r = m[name]  # type: ignore[index]
            tau = "–" if r["tau"] is None else f"{r['tau']:.2f}"
            print(
                f"| {dtype} | {name} ({r['effective_method']}) | {r['tokens_per_s']:.1f} | "
                f"{r['speedup_vs_hf']:.2f}x | {tau} | {r['exact_match_vs_hf']:.2f} |",
                flush=True,
            )
            if dtype == "float32" and r["exact_match_vs_hf"] < 1.0:
                ok = False
    print("\ngpu-check:", "OK" if ok else "FAILED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
