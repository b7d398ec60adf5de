"""`python -m s4c_engine.bench`: the benchmark without the s4c CLI (same options)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from s4c_engine.bench.runner import ALL_METHODS, BenchConfig, cli_main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m s4c_engine.bench", description=__doc__)
    p.add_argument(
        "--model-dir",
        type=Path,
        default=Path.home() / ".cache" / "s4c" / "models" / "SmolLM2-135M-Instruct",
    )
    p.add_argument("--prompts", type=Path, default=None)
    p.add_argument("--per-category", type=int, default=None)
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-sizes", default="1")
    p.add_argument("--batch-methods", default="hf,s4c")
    p.add_argument("--json", dest="json_out", type=Path, default=None)
    p.add_argument("--s4c-heads", type=Path, default=None)
    p.add_argument("--medusa-heads", type=Path, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cli_main(
        BenchConfig(
            model_dir=a.model_dir,
            prompts=a.prompts,
            per_category=a.per_category,
            methods=tuple(a.methods.split(",")),
            max_new_tokens=a.max_new_tokens,
            batch_sizes=tuple(int(x) for x in a.batch_sizes.split(",")),
            batch_methods=tuple(a.batch_methods.split(",")),
            json_out=a.json_out,
            s4c_heads=a.s4c_heads,
            medusa_heads=a.medusa_heads,
            device=a.device,
            dtype=a.dtype,
            threads=a.threads,
        )
    )


if __name__ == "__main__":
    main()
