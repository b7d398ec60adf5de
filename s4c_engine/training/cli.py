"""`s4c train-heads`: distil (resumable), train each head kind, export the heads, build the
answer datastore.

`cli_main(TrainHeadsConfig)` is the whole recipe as one call; the s4c CLI only maps options
onto the config. Every stage resumes: rerunning the same command continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from s4c_engine.datastore import CONFIG_FILE as DATASTORE_CONFIG
from s4c_engine.datastore import TABLES_FILE
from s4c_engine.heads import CONFIG_FILE, WEIGHTS_FILE, HeadKind
from s4c_engine.training.datastore_build import REPORT_FILE as DATASTORE_REPORT
from s4c_engine.training.datastore_build import build_datastore, format_report
from s4c_engine.training.distill import DistillConfig, run_distill
from s4c_engine.training.train import REPORT_FILE, TrainConfig, TrainResult, train_heads

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TrainHeadsConfig:
    """The recipe behind the shipped heads (defaults) for any HF causal LM directory.

    work_dir holds the distillation data (`distill/`) and one training run per kind
    (`<kind>/`); out_dir (optional) receives the final heads as `<kind>/` directories.
    """

    model_dir: Path
    work_dir: Path
    out_dir: Path | None = None
    train_dir: Path | None = None  # None: shared/data/train beside the repository
    kinds: tuple[HeadKind, ...] = ("s4c", "medusa")
    skip_distill: bool = False
    # distil until this many answers exist (None: the whole mix); 9,216 = 12 shards of 768,
    # about 1 h 45 min on the 2-core CPU, so distillation and training fit in three hours
    samples: int | None = 9216
    per_category: int = 1400
    max_new_tokens: int = 128
    distill_batch_size: int = 48
    distill_dtype: str = "float32"
    feature_layers: tuple[int, ...] = ()  # s4c heads: decoder layers fused into the input
    num_heads: int = 4
    num_layers: int = 2  # ResBlocks per s4c head (medusa heads keep Medusa-1's one)
    context_heads: int = 0  # s4c: attention heads over the committed context (0: none)
    init_heads: Path | None = None  # s4c: start from these trained heads (see TrainConfig)
    init_lr_scale: float = 0.25  # lr factor of init_heads' own weights (0: frozen)
    context_samples: int = 16  # context runs: samples per step
    warmup_steps: int = 200
    draft_vocab_size: int = 8192
    steps: int = 8_000
    batch_size: int = 512
    lr: float = 1e-3
    autocast: bool = True  # bf16 matmuls while training (fp32 weights and evaluation)
    datastore: bool = False  # also build an (opt-in) answer datastore from the answers
    save_dtype: str = "float16"
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"


def cli_main(config: TrainHeadsConfig) -> list[TrainResult]:
    """Distil, train every kind, copy the heads to out_dir, build the answer datastore;
    returns one result per kind."""
    data_dir = config.work_dir / "distill"
    if not config.skip_distill:
        run_distill(
            DistillConfig(
                model_dir=config.model_dir,
                train_dir=config.train_dir or REPO_ROOT.parent / "shared" / "data" / "train",
                out_dir=data_dir,
                per_category=config.per_category,
                seed=config.seed,
                batch_size=config.distill_batch_size,
                max_new_tokens=config.max_new_tokens,
                max_samples=config.samples,
                feature_layers=config.feature_layers,
                dtype=config.distill_dtype,
                threads=config.threads,
                device=config.device,
            )
        )
    results = []
    for kind in config.kinds:
        result = train_heads(
            TrainConfig(
                model_dir=config.model_dir,
                data_dir=data_dir,
                out_dir=config.work_dir / kind,
                kind=kind,
                num_heads=config.num_heads,
                num_layers=config.num_layers if kind == "s4c" else 1,
                autocast=config.autocast,
                warmup_steps=config.warmup_steps,
                feature_layers=config.feature_layers if kind == "s4c" else (),
                context_heads=config.context_heads if kind == "s4c" else 0,
                init_heads=config.init_heads if kind == "s4c" else None,
                init_lr_scale=config.init_lr_scale,
                context_samples=config.context_samples,
                draft_vocab_size=config.draft_vocab_size,
                steps=config.steps,
                batch_size=config.batch_size,
                lr=config.lr,
                save_dtype=config.save_dtype,
                seed=config.seed,
                threads=config.threads,
                device=config.device,
            )
        )
        results.append(result)
        if config.out_dir is not None:
            dest = config.out_dir / kind
            dest.mkdir(parents=True, exist_ok=True)
            for name in (CONFIG_FILE, WEIGHTS_FILE):
                shutil.copyfile(result.heads_dir / name, dest / name)
            # The run's full report (config, validation history) ships beside the heads.
            shutil.copyfile(result.heads_dir.parent / REPORT_FILE, dest / "training_report.json")
            log.info("%s heads written to %s", kind, dest)
    if config.datastore:
        _build_datastore(config, data_dir)
    return results


def _build_datastore(config: TrainHeadsConfig, data_dir: Path) -> None:
    """The answer datastore from the distilled answers (same validation split as the heads),
    into work_dir/datastore and, with out_dir, out_dir/datastore; logs the replay report."""
    model_config = json.loads((config.model_dir / "config.json").read_text())
    built = config.work_dir / "datastore"
    report = build_datastore(
        [data_dir],
        built,
        target_name=config.model_dir.name,
        vocab_size=int(model_config["vocab_size"]),
    )
    log.info("answer datastore built in %s\n%s", built, format_report(report))
    if config.out_dir is not None:
        dest = config.out_dir / "datastore"
        dest.mkdir(parents=True, exist_ok=True)
        for name in (DATASTORE_CONFIG, TABLES_FILE, DATASTORE_REPORT):
            shutil.copyfile(built / name, dest / name)
