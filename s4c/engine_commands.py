"""`s4c bench` and `s4c train-heads`: thin option mappings onto the engine's own entry points.

The benchmark (`s4c_engine.bench.runner.cli_main`) and the head-training recipe
(`s4c_engine.training.cli.cli_main`) do the work; these commands only turn flags into their
config dataclasses. torch is imported inside the commands, never at import time.
"""

from __future__ import annotations

from pathlib import Path

import click

from jobs.settings import Settings


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


PathOption = click.Path(path_type=Path)


@click.command("bench")
@click.option("--model-dir", type=PathOption, default=None, help="Default: the served model.")
@click.option("--prompts", type=PathOption, default=None, help="Spec-Bench question.jsonl.")
@click.option("--per-category", type=int, default=None, help="First N prompts per category.")
@click.option(
    "--turns", type=click.IntRange(min=1), default=1, show_default=True,
    help="Turns asked per question: 2 also asks MT-bench's second turn, after each method's "
    "own first answer (as Spec-Bench). Questions with one turn, and plain JSONL prompts, "
    "are asked once.",
)  # fmt: skip
@click.option(
    "--methods", default="hf,hf-pld,ar,medusa,s4c", show_default=True,
    help="Comma-separated, from hf, hf-pld, ar, medusa, s4c and the s4c ablations "
    "s4c-heads (its heads without lookup chains), lookup (lookup chains alone: context, and "
    "the answer datastore's with --datastore) and s4c-no-store (s4c without the datastore).",
)  # fmt: skip
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--batch-sizes", default="1", show_default=True, help="Comma-separated.")
@click.option("--batch-methods", default="hf,s4c", show_default=True)
@click.option("--json", "json_out", type=PathOption, default=None, help="Per-prompt records.")
@click.option("--s4c-heads", type=PathOption, default=None)
@click.option("--medusa-heads", type=PathOption, default=None)
@click.option(
    "--datastore", type=PathOption, default=None,
    help="An answer datastore directory for s4c and its ablations (default: none); "
    "s4c-no-store runs s4c without it.",
)  # fmt: skip
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads.")
def bench(
    model_dir: Path | None,
    prompts: Path | None,
    per_category: int | None,
    turns: int,
    methods: str,
    max_new_tokens: int,
    batch_sizes: str,
    batch_methods: str,
    json_out: Path | None,
    s4c_heads: Path | None,
    medusa_heads: Path | None,
    datastore: Path | None,
    device: str,
    dtype: str,
    threads: int | None,
) -> None:
    """Spec-Bench protocol (shared/BENCHMARK.md): speed, tau, acceptance, exact match."""
    from s4c_engine.bench.runner import BenchConfig, cli_main

    try:
        config = BenchConfig(
            model_dir=model_dir or _settings().resolved_model_dir,
            prompts=prompts,
            per_category=per_category,
            turns=turns,
            methods=_split(methods),
            max_new_tokens=max_new_tokens,
            batch_sizes=tuple(int(size) for size in _split(batch_sizes)),
            batch_methods=_split(batch_methods),
            json_out=json_out,
            s4c_heads=s4c_heads,
            medusa_heads=medusa_heads,
            datastore=datastore,
            device=device,
            dtype=dtype,
            threads=threads,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    cli_main(config)


@click.command("train-heads")
@click.option("--model-dir", type=PathOption, default=None, help="Default: the served model.")
@click.option(
    "--work-dir", type=PathOption, default=None,
    help="Distillation data and runs (default: $S4C_HOME/train-heads/<model>).",
)  # fmt: skip
@click.option("--out-dir", type=PathOption, default=None, help="Where the final heads go.")
@click.option("--train-dir", type=PathOption, default=None, help="Training prompt mix.")
@click.option("--kinds", default="s4c,medusa", show_default=True)
@click.option("--skip-distill", is_flag=True, help="Reuse the distillation data as it is.")
@click.option(
    "--samples", type=int, default=9216, show_default=True,
    help="Distil until this many answers exist (0: the whole mix).",
)  # fmt: skip
@click.option(
    "--per-category", type=int, default=1400, show_default=True,
    help="Prompts drawn per training category (the mix).",
)  # fmt: skip
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option(
    "--distill-dtype", type=click.Choice(["float32", "bfloat16"]), default="float32",
    show_default=True,
    help="Target dtype while distilling; bfloat16 is ~4x faster on CPUs with AMX.",
)  # fmt: skip
@click.option(
    "--feature-layers", default="", show_default=False,
    help="s4c only: comma-separated decoder layers whose outputs join the heads' input "
    "(e.g. 9,19); the distillation stores them. Default: the last hidden state alone.",
)  # fmt: skip
@click.option("--num-heads", type=int, default=4, show_default=True)
@click.option(
    "--num-layers", type=int, default=2, show_default=True, help="ResBlocks per s4c head."
)
@click.option(
    "--context-heads", type=click.IntRange(min=0), default=0, show_default=True,
    help="s4c only: attention heads over the committed context (0: none); such runs draw "
    "--context-samples samples per step and score --batch-size of their positions.",
)  # fmt: skip
@click.option(
    "--init-heads", type=PathOption, default=None,
    help="s4c only: start from these trained heads (their weights and draft vocabulary, "
    "widened to --draft-vocab-size if that is larger; new parts such as context attention "
    "or --feature-layers start as the identity).",
)  # fmt: skip
@click.option(
    "--init-lr-scale", type=click.FloatRange(min=0.0), default=0.25, show_default=True,
    help="With --init-heads: learning-rate factor of the heads' own weights taken from "
    "them (0: frozen); the context attention and fused-layer projections, new or taken "
    "from them, train at --lr.",
)  # fmt: skip
@click.option(
    "--context-samples", type=click.IntRange(min=1), default=16, show_default=True,
    help="With --context-heads: samples per step, each scoring at most "
    "batch-size / context-samples of its positions.",
)  # fmt: skip
@click.option(
    "--draft-vocab-size", type=click.IntRange(min=1), default=8192, show_default=True,
    help="Tokens the heads can draft: the most frequent of the distilled data (capped at "
    "the model's vocabulary).",
)  # fmt: skip
@click.option("--steps", type=int, default=8_000, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--batch-size", type=int, default=512, show_default=True)
@click.option(
    "--autocast/--no-autocast", default=True, show_default=True,
    help="bf16 matmuls while training (weights, optimizer and evaluation stay fp32).",
)  # fmt: skip
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option(
    "--datastore/--no-datastore", default=False, show_default=True,
    help="Also build an answer datastore from the distilled answers (work-dir/datastore, "
    "and out-dir/datastore): an opt-in second lookup chain for s4c (S4C_DATASTORE).",
)  # fmt: skip
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads.")
def train_heads(
    model_dir: Path | None,
    work_dir: Path | None,
    out_dir: Path | None,
    train_dir: Path | None,
    kinds: str,
    skip_distill: bool,
    samples: int,
    per_category: int,
    max_new_tokens: int,
    distill_dtype: str,
    feature_layers: str,
    num_heads: int,
    num_layers: int,
    context_heads: int,
    init_heads: Path | None,
    init_lr_scale: float,
    context_samples: int,
    draft_vocab_size: int,
    steps: int,
    warmup_steps: int,
    batch_size: int,
    autocast: bool,
    lr: float,
    datastore: bool,
    device: str,
    threads: int | None,
) -> None:
    """Train draft heads for a model: distil its answers, train, export (resumable)."""
    from s4c_engine.training.cli import TrainHeadsConfig, cli_main

    settings = _settings()
    model_dir = model_dir or settings.resolved_model_dir
    unknown = [kind for kind in _split(kinds) if kind not in ("s4c", "medusa")]
    if unknown:
        raise click.ClickException(f"unknown head kinds {unknown}: use s4c and/or medusa")
    try:
        layers = tuple(int(x) for x in _split(feature_layers))
    except ValueError as exc:
        raise click.ClickException(f"--feature-layers: {exc}") from exc
    config = TrainHeadsConfig(
        model_dir=model_dir,
        work_dir=work_dir or settings.home / "train-heads" / model_dir.name,
        out_dir=out_dir,
        train_dir=train_dir,
        kinds=_split(kinds),  # type: ignore[arg-type]  # checked just above
        skip_distill=skip_distill,
        samples=samples or None,
        per_category=per_category,
        max_new_tokens=max_new_tokens,
        distill_dtype=distill_dtype,
        feature_layers=layers,
        num_heads=num_heads,
        num_layers=num_layers,
        context_heads=context_heads,
        init_heads=init_heads,
        init_lr_scale=init_lr_scale,
        context_samples=context_samples,
        draft_vocab_size=draft_vocab_size,
        steps=steps,
        warmup_steps=warmup_steps,
        batch_size=batch_size,
        autocast=autocast,
        lr=lr,
        datastore=datastore,
        device=device,
        threads=threads,
    )
    for result in cli_main(config):
        click.echo(str(result.heads_dir))
