"""Head training on the cached distillation data: soft cross-entropy to the target, frozen target.

Head i at position g sees h_g and (s4c) the teacher-forced path token[g .. g+i] (the target's
own greedy tokens) and learns the target's distribution at g+i+1 (top-k logits cached by
`distill`, restricted to the draft vocabulary), weighted by depth_decay**i. AdamW, warmup then
cosine decay, fixed seeds; a checkpoint every `checkpoint_every` steps lets a stopped run
continue where it was. The target model is loaded only for its frozen embedding and lm_head.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from s4c_engine.heads import CONFIG_FILE, WEIGHTS_FILE, Context, DraftHeads, HeadConfig, HeadKind
from s4c_engine.training.data import (
    PositionData,
    build_draft_vocab,
    load_splits,
    read_index,
    sample_spans,
)
from s4c_engine.training.warm_start import warm_start

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
REPORT_FILE = "report.json"
HEADS_DIR = "heads"
# Parts of the heads a later stage may add to trained ones; with init_heads they train at
# the full lr (the rest at init_lr_scale times it), new or taken over.
NEW_PARTS = ("context.", "fuse.")


@dataclass(frozen=True)
class TrainConfig:
    """One head-training run; `out_dir` gets checkpoint.pt, heads/ and report.json."""

    model_dir: Path
    data_dir: Path
    out_dir: Path
    kind: HeadKind = "s4c"
    target_name: str = ""  # default: model_dir's name
    num_heads: int = 4
    num_layers: int = 1
    feature_layers: tuple[int, ...] = ()  # s4c: decoder layers fused into the heads' input
    # s4c: attention heads over the committed context (0 = none; see ContextAttention); such
    # runs draw samples per step (context_samples) rather than single positions
    context_heads: int = 0
    context_head_dim: int = 64
    # start from these trained heads (a heads directory): their weights and draft vocabulary
    # (widened to draft_vocab_size if that is larger), new parts (context attention, fused
    # layers) at their identity start; no least-squares warm start
    init_heads: Path | None = None
    # with init_heads: lr factor of the heads' own weights taken from them (input projections,
    # ResBlocks); the context attention and fused-layer projections, new or taken from them,
    # train at lr (0: the heads' own weights stay frozen and only those parts train)
    init_lr_scale: float = 0.25
    context_samples: int = 16  # context runs: samples per step, each scoring at most
    # batch_size // context_samples of its positions (drawn at random), so a step's
    # positions come from many samples while each sees its whole context
    draft_vocab_size: int = 8192
    steps: int = 2000
    batch_size: int = 256  # positions per step
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    final_lr_fraction: float = 0.1
    depth_decay: float = 0.8
    feature_weight: float = 1.0  # weight of the feature-regression term (0 = soft CE only)
    warm_start: bool = True  # least-squares start of the s4c input projections
    noise: float = 0.0  # uniform noise on h_t (EAGLE-style augmentation), 0 = off
    prompt_positions: bool = True  # also train on prompt positions (answers are always used)
    val_percent: float = 3.0
    max_samples: int | None = None
    val_positions: int = 20_000
    checkpoint_every: int = 200
    eval_every: int = 1000
    stop_after: int | None = None  # pause at this step (checkpointed); rerun to continue
    save_dtype: str = "float32"  # dtype of the written heads ("float16" halves the file)
    # bf16 autocast for the training forward/backward (matmuls on AMX/tensor cores; weights,
    # optimizer state and evaluation stay fp32)
    autocast: bool = False
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class Evaluation:
    """Validation at one step: per-depth top-1 accuracy (head argmax == target's greedy token),
    the share of positions where heads 0..i are all right (a teacher-forced chain) and loss."""

    step: int
    loss: float
    top1: tuple[float, ...]
    chain: tuple[float, ...]
    positions: int


@dataclass(frozen=True)
class TrainResult:
    heads_dir: Path
    steps: int
    seconds: float
    train_loss: float
    evaluation: Evaluation
    draft_vocab_coverage: float  # share of training answer tokens inside the draft vocabulary
    val_draft_vocab_coverage: float  # the same on the validation answers
    train_positions: int
    train_samples: int
    history: tuple[Evaluation, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Batch:
    """hidden (B, F) fp32 head input features; path (B, K) target ids; teacher ids/values (K, B, k); valid (K, B)."""

    hidden: torch.Tensor
    path: torch.Tensor
    teacher_ids: torch.Tensor
    teacher_values: torch.Tensor
    valid: torch.Tensor
    greedy: torch.Tensor  # (K, B) target's greedy token at each head's position
    future: torch.Tensor  # (K, B, D) target hidden state at each head's position
    # heads with context attention: the entries' inputs (N context positions) and which of
    # them each of the B positions sees, (B, N) bool (same sample, not later)
    context_hidden: torch.Tensor | None = None  # (N, D)
    context_tokens: torch.Tensor | None = None  # (N,)
    context_next: torch.Tensor | None = None  # (N,)
    context_mask: torch.Tensor | None = None  # (B, N)


@dataclass(frozen=True)
class HeadLosses:
    """Per head (K,): soft cross-entropy and feature regression; draft argmax ids (K, B)."""

    ce: torch.Tensor
    feature: torch.Tensor
    preds: torch.Tensor


def features(data: PositionData, idx: torch.Tensor, layers: tuple[int, ...] = ()) -> torch.Tensor:
    """The heads' input features at positions `idx`: last hidden state, then `layers`."""
    if not layers:
        return data.hidden[idx].float()
    return torch.cat([data.hidden[idx]] + [data.layers[i][idx] for i in layers], -1).float()


def make_batch(
    data: PositionData,
    idx: torch.Tensor,
    num_heads: int,
    device: str | torch.device = "cpu",
    layers: tuple[int, ...] = (),
) -> Batch:
    """Gather the rows of positions `idx` (B,) onto `device`; each has depth_left >= 2."""
    last = data.num_positions - 1
    steps = torch.arange(num_heads + 1)
    rows = (idx[:, None] + steps[None, :]).clamp(max=last)  # (B, K+1)
    valid = data.depth_left[idx][None, :] > (steps[1:, None])  # (K, B)
    tgt = rows[:, 1:].T  # (K, B)
    return Batch(
        hidden=features(data, idx, layers).to(device),
        path=data.token[rows[:, :num_heads]].to(device),
        teacher_ids=data.topk_ids[tgt].long().to(device),
        teacher_values=data.topk_values[tgt].float().to(device),
        valid=valid.to(device),
        greedy=data.token[tgt].to(device),
        future=data.hidden[tgt].float().to(device),
    )


def sample_batch(
    data: PositionData,
    spans: tuple[torch.Tensor, torch.Tensor],
    samples: torch.Tensor,
    usable: torch.Tensor,
    num_heads: int,
    device: str | torch.device = "cpu",
    layers: tuple[int, ...] = (),
    limit: int | None = None,
    per_sample: int | None = None,
    generator: torch.Generator | None = None,
) -> Batch | None:
    """A batch of whole samples for heads with context attention: `samples` index the
    split's `spans` (`sample_spans(data)`); every position of the samples is a context entry,
    the `usable` ones (N,) bool are scored (the first `limit`, or at most `per_sample` of each
    sample drawn with `generator`), each seeing its own sample up to itself. None when no
    position is usable."""
    starts, lengths = spans
    ranges = [torch.arange(int(starts[s]), int(starts[s] + lengths[s])) for s in samples]
    positions = torch.cat(ranges)
    owner = torch.cat([torch.full((len(r),), j) for j, r in enumerate(ranges)])
    scored = torch.nonzero(usable[positions]).squeeze(1)[:limit]
    if per_sample is not None:
        picks = []
        for j in range(len(ranges)):
            mine = scored[owner[scored] == j]
            if len(mine) > per_sample:
                mine = mine[torch.randperm(len(mine), generator=generator)[:per_sample]].sort()[0]
            picks.append(mine)
        scored = torch.cat(picks)
    if len(scored) == 0:
        return None
    batch = make_batch(data, positions[scored], num_heads, device, layers)
    at = positions[scored]
    mask = (owner[None, :] == owner[scored][:, None]) & (positions[None, :] <= at[:, None])
    return Batch(
        **{k: getattr(batch, k) for k in ("hidden", "path", "teacher_ids", "teacher_values")},
        valid=batch.valid,
        greedy=batch.greedy,
        future=batch.future,
        context_hidden=data.hidden[positions].float().to(device),
        context_tokens=data.input_token[positions].to(device),
        context_next=data.token[positions].to(device),
        context_mask=mask.to(device),
    )


def step_samples(num_samples: int, step: int, config: TrainConfig) -> torch.Tensor:
    """Samples for `step` of a context run: `context_samples` of them, drawn with a generator
    seeded by (seed, step), so a resumed run draws the same."""
    gen = torch.Generator().manual_seed(config.seed * 100_003 + step)
    return torch.randperm(num_samples, generator=gen)[: config.context_samples]


def head_losses(
    heads: DraftHeads, batch: Batch, noise: float = 0.0, generator: torch.Generator | None = None
) -> HeadLosses:
    """Soft cross-entropy and feature regression of every head on a batch.

    Teacher p = softmax of the cached top-k logits over those inside the draft vocabulary;
    ce_i = mean over valid positions of -sum_v p(v) log q_i(v), q_i = softmax(head i).
    The target's own hidden state at head i's position is the feature whose frozen lm_head
    output *is* the teacher distribution, so feature_i = smooth-L1(head features, that state)
    (EAGLE-style): a dense, well-conditioned signal next to the sharp logits.
    """
    hidden = batch.hidden
    if noise > 0:
        jitter = torch.rand(hidden.shape, generator=generator).to(hidden.device) - 0.5
        hidden = hidden + noise * jitter
    context = None
    if heads.context is not None:
        if batch.context_hidden is None or batch.context_mask is None:
            raise ValueError("heads with context attention train on sample batches")
        keys, values = heads.context_entries(
            batch.context_hidden,
            # set together with context_hidden and context_mask (checked above)
            batch.context_tokens,  # type: ignore[arg-type]
            batch.context_next,  # type: ignore[arg-type]
        )
        context = heads.context.with_sink(
            Context(keys[None], values[None], batch.context_mask[None])
        )
    ces, feats, preds = [], [], []
    for i in range(heads.num_heads):
        path = batch.path[:, : i + 1] if heads.config.kind == "s4c" else None
        features = heads.head_features(i, hidden, path, context)  # (B, D)
        # fp32 softmax and regression even under bf16 autocast (only the matmuls drop)
        logq = torch.log_softmax(heads.vocab(features).float(), dim=-1)  # (B, Vd)
        draft = heads.target_to_draft[batch.teacher_ids[i]]  # (B, k), -1 outside
        inside = draft >= 0
        p = torch.softmax(batch.teacher_values[i].masked_fill(~inside, -math.inf), dim=-1)
        ok = batch.valid[i] & inside.any(-1)
        ce = -(p.nan_to_num(0.0) * logq.gather(1, draft.clamp(min=0))).sum(-1)  # (B,)
        reg = torch.nn.functional.smooth_l1_loss(
            features.float(), batch.future[i], reduction="none"
        )
        count = ok.sum().clamp(min=1)
        ces.append((ce * ok).sum() / count)
        feats.append((reg.mean(-1) * batch.valid[i]).sum() / count)
        preds.append(heads.to_target_ids(logq.argmax(-1)))
    return HeadLosses(torch.stack(ces), torch.stack(feats), torch.stack(preds))


def depth_weights(num_heads: int, decay: float) -> torch.Tensor:
    w = torch.tensor([decay**i for i in range(num_heads)])
    return w / w.sum()


@torch.no_grad()
def evaluate(heads: DraftHeads, data: PositionData, config: TrainConfig, step: int) -> Evaluation:
    """Per-depth top-1 accuracy on (at most `val_positions` of) the validation split."""
    heads.eval()
    # Decoding drafts on answers: score answer positions (prompt positions only train).
    eligible = torch.nonzero((data.depth_left >= 2) & data.is_answer).squeeze(1)
    eligible = eligible[: config.val_positions]
    k = heads.num_heads
    right, total, chain = (torch.zeros(k, device=config.device) for _ in range(3))
    loss_sum, batches = 0.0, 0
    weights = depth_weights(k, config.depth_decay).to(config.device)
    for batch in _validation_batches(heads, data, eligible, config):
        out = head_losses(heads, batch)
        preds = out.preds
        loss_sum += float((out.ce * weights).sum())
        batches += 1
        hit = (preds == batch.greedy) & batch.valid  # (K, B)
        right += hit.sum(1)
        total += batch.valid.sum(1)
        chain += (hit.cumprod(0).bool() & batch.valid).sum(1)
    heads.train()
    return Evaluation(
        step=step,
        loss=loss_sum / max(1, batches),
        top1=tuple(float(r / max(1, t)) for r, t in zip(right, total)),
        chain=tuple(float(c / max(1, t)) for c, t in zip(chain, total)),
        positions=int(total[0]),
    )


def _validation_batches(
    heads: DraftHeads, data: PositionData, eligible: torch.Tensor, config: TrainConfig
) -> Iterator[Batch]:
    """The validation positions `eligible` in batches: 1,024 positions, or for heads with
    context attention whole samples in order (about 2,048 positions each) until as many
    positions as `eligible` holds are scored."""
    k = heads.num_heads
    if heads.context is None:
        for start in range(0, len(eligible), 1024):
            yield make_batch(
                data, eligible[start : start + 1024], k, config.device, config.feature_layers
            )
        return
    usable = torch.zeros(data.num_positions, dtype=torch.bool)
    usable[eligible] = True
    spans = sample_spans(data)
    lengths = spans[1]
    left, group, size = len(eligible), [], 0
    for s in range(len(lengths)):
        group.append(s)
        size += int(lengths[s])
        if size < 2048 and s + 1 < len(lengths):
            continue
        batch = sample_batch(
            data, spans, torch.tensor(group), usable, k, config.device, config.feature_layers, left
        )
        group, size = [], 0
        if batch is not None:
            yield batch
            left -= int(batch.hidden.shape[0])
            if left <= 0:
                return


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine from 1 down to `final_lr_fraction` at `steps`."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - config.warmup_steps) / span)))
    return config.final_lr_fraction + (1 - config.final_lr_fraction) * cos


def batch_indices(eligible: torch.Tensor, step: int, config: TrainConfig) -> torch.Tensor:
    """Positions for `step`: epoch e is a permutation seeded by (seed, e), so resuming at any
    step draws exactly what an uninterrupted run would have."""
    per_epoch = max(1, len(eligible) // config.batch_size)
    epoch, pos = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    perm = torch.randperm(len(eligible), generator=gen)
    return eligible[perm[pos * config.batch_size : (pos + 1) * config.batch_size]]


def _context_start(config: TrainConfig) -> int:
    """Where the distilled samples' stored positions begin (the chat template's common
    header is not stored): context entries start there at inference too."""
    start: int = min(int(r.get("start", 0)) for r in read_index(config.data_dir))  # type: ignore[call-overload]
    return start


def _init_from(
    path: Path, config: HeadConfig, model: torch.nn.Module, vocab: torch.Tensor
) -> DraftHeads:
    """Heads of `config` starting from the trained heads in `path` (same kind, sizes and
    target): their weights and draft vocabulary; parts they lack (context attention, fused
    decoder layers) start new, at "no effect". A larger `config.draft_vocab_size` widens
    their vocabulary: their ids first, then the most frequent others of this run's `vocab`
    (ranked ids), so every draft they made before they still make."""
    raw = json.loads((Path(path) / CONFIG_FILE).read_text())
    old = HeadConfig(**raw)
    same = ("kind", "num_heads", "num_layers", "target_arch", "hidden_size", "vocab_size")
    if any(getattr(old, k) != getattr(config, k) for k in same) or (
        old.feature_layers not in ((), config.feature_layers)
    ):
        raise ValueError(f"{path}: heads of another structure than this run's")
    state = load_file(str(Path(path) / WEIGHTS_FILE))
    ids = state["draft_vocab"].long()
    if config.draft_vocab_size > len(ids):
        taken = set(ids.tolist())
        more = [t for t in vocab.tolist() if t not in taken][: config.draft_vocab_size - len(ids)]
        ids = torch.cat([ids, torch.tensor(more, dtype=torch.long)])
    config = replace(config, draft_vocab_size=len(ids))
    heads = DraftHeads.create(config, model, ids)
    state["draft_vocab"] = ids
    missing, unexpected = heads.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False
    )
    if unexpected or any(not k.startswith(NEW_PARTS) for k in missing):
        raise ValueError(f"{path}: weights do not fit ({unexpected or missing})")
    return heads


def _coverage(heads: DraftHeads, tokens: torch.Tensor) -> float:
    """Share of `tokens` inside the heads' draft vocabulary."""
    return float((heads.target_to_draft[tokens] >= 0).float().mean()) if len(tokens) else 0.0


def _config_json(config: TrainConfig) -> dict[str, object]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}


def train_heads(config: TrainConfig) -> TrainResult:
    """Train (or resume training) one set of heads; write heads/, report.json; return result."""
    from transformers import AutoModelForCausalLM

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = config.out_dir / CHECKPOINT_FILE
    ckpt = torch.load(ckpt_path, weights_only=False) if ckpt_path.exists() else None
    # A resumed run reads exactly the samples it started with (the index is append-only).
    limit = int(ckpt["num_samples"]) if ckpt is not None else config.max_samples
    splits = load_splits(config.data_dir, config.val_percent, limit, config.feature_layers)
    num_samples = splits.train.num_samples + splits.val.num_samples
    model = AutoModelForCausalLM.from_pretrained(str(config.model_dir), dtype=torch.float32)
    model.requires_grad_(False)
    # transformers wraps PreTrainedModel.to with functools.wraps, which mypy binds as unbound
    model.to(config.device)  # type: ignore[arg-type]
    eos = model.generation_config.eos_token_id
    eos_ids = (eos,) if isinstance(eos, int) else tuple(eos or ())
    head_config = HeadConfig.for_target(
        model,
        config.target_name or config.model_dir.name,
        kind=config.kind,
        num_heads=config.num_heads,
        num_layers=config.num_layers,
        feature_layers=config.feature_layers,
        draft_vocab_size=min(config.draft_vocab_size, int(model.config.vocab_size)),
        context_heads=config.context_heads,
        context_head_dim=config.context_head_dim,
        context_start=_context_start(config) if config.context_heads else 0,
    )
    vocab = build_draft_vocab(
        splits.train.token, head_config.draft_vocab_size, head_config.vocab_size, eos_ids
    )
    if config.init_heads is not None:
        heads = _init_from(config.init_heads, head_config, model, vocab.ids)
        vocab = replace(vocab, coverage=_coverage(heads, splits.train.token))
    else:
        heads = DraftHeads.create(head_config, model, vocab.ids)
    head_config = heads.config
    del model
    new_params = [p for n, p in heads.named_parameters() if n.startswith(NEW_PARTS)]
    old_params = [p for n, p in heads.named_parameters() if not n.startswith(NEW_PARTS)]
    scale = config.init_lr_scale if config.init_heads is not None else 1.0
    groups = []
    if scale > 0:
        groups.append({"params": old_params, "lr": config.lr * scale})
    else:  # the trained heads stay as they are; only the new parts learn
        for param in old_params:
            param.requires_grad_(False)
    if new_params:
        groups.append({"params": new_params, "lr": config.lr})
    optim = torch.optim.AdamW(
        groups, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95)
    )
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_factor(s, config))
    start_step, history, elapsed = 0, [], 0.0
    if ckpt is not None:
        if ckpt["head_config"] != asdict(head_config):
            raise ValueError(f"{ckpt_path} was made with another head config; use a new out_dir")
        heads.load_state_dict(ckpt["heads"])
        optim.load_state_dict(ckpt["optim"])
        sched.load_state_dict(ckpt["sched"])
        start_step, elapsed = int(ckpt["step"]), float(ckpt["seconds"])
        history = [Evaluation(**e) for e in ckpt["history"]]
        log.info("resuming %s from step %d", config.kind, start_step)
    usable = splits.train.depth_left >= 2
    if not config.prompt_positions:
        usable &= splits.train.is_answer
    eligible = torch.nonzero(usable).squeeze(1)
    if len(eligible) == 0:
        raise ValueError(f"no training positions in {config.data_dir}")
    weights = depth_weights(heads.num_heads, config.depth_decay).to(config.device)
    spans = sample_spans(splits.train) if heads.context is not None else None
    if ckpt is None:
        history.append(evaluate(heads, splits.val, config, 0))
        log.info("untrained val %s", history[-1])
        if config.warm_start and head_config.kind == "s4c" and config.init_heads is None:
            warm_start(heads, splits.train, seed=config.seed)
            history.append(evaluate(heads, splits.val, config, 0))
            log.info("warm-started val %s", history[-1])
    heads.train()
    running = float("nan")
    t0 = time.perf_counter()
    bar = tqdm(total=config.steps, initial=start_step, desc=f"train {config.kind}", unit="step")
    end = config.steps if config.stop_after is None else min(config.steps, config.stop_after)
    for step in range(start_step, end):
        if spans is None:
            idx = batch_indices(eligible, step, config)
            batch = make_batch(
                splits.train, idx, heads.num_heads, config.device, config.feature_layers
            )
        else:
            drawn = sample_batch(
                splits.train,
                spans,
                step_samples(len(spans[0]), step, config),
                usable,
                heads.num_heads,
                config.device,
                config.feature_layers,
                per_sample=max(1, config.batch_size // config.context_samples),
                generator=torch.Generator().manual_seed(config.seed * 100_019 + step),
            )
            if drawn is None:  # a sample with nothing to score (too short): skip the step
                bar.update(1)
                continue
            batch = drawn
        noise_gen = torch.Generator().manual_seed(config.seed * 100_003 + step)
        with torch.autocast(
            torch.device(config.device).type, dtype=torch.bfloat16, enabled=config.autocast
        ):
            out = head_losses(heads, batch, config.noise, noise_gen)
            loss = (weights * (out.ce.float() + config.feature_weight * out.feature.float())).sum()
        optim.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(heads.parameters(), 1.0)
        optim.step()
        sched.step()
        value = loss.item()
        running = value if math.isnan(running) else 0.98 * running + 0.02 * value
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        done = step + 1
        if done % config.eval_every == 0 or done == config.steps:
            history.append(evaluate(heads, splits.val, config, done))
            log.info("step %d val %s", done, history[-1])
        if done % config.checkpoint_every == 0 or done == end:
            checkpoint = {
                "step": done,
                "seconds": elapsed + time.perf_counter() - t0,
                "train_loss": running,
                "heads": heads.state_dict(),
                "optim": optim.state_dict(),
                "sched": sched.state_dict(),
                "head_config": asdict(head_config),
                "history": [asdict(e) for e in history],
                "config": _config_json(config),
                "num_samples": num_samples,
            }
            torch.save(checkpoint, ckpt_path)
    bar.close()
    seconds = elapsed + time.perf_counter() - t0
    if math.isnan(running) and ckpt is not None:
        running = float(ckpt.get("train_loss", running))
    if history[-1].step != end:
        history.append(evaluate(heads, splits.val, config, end))
    result = TrainResult(
        heads_dir=config.out_dir / HEADS_DIR,
        steps=end,
        seconds=seconds,
        train_loss=running,
        evaluation=history[-1],
        draft_vocab_coverage=vocab.coverage,
        val_draft_vocab_coverage=float(
            (
                heads.target_to_draft[
                    splits.val.token[splits.val.is_answer].to(heads.target_to_draft.device)
                ]
                >= 0
            )
            .float()
            .mean()
        )
        if splits.val.num_positions
        else 0.0,
        train_positions=len(eligible),
        train_samples=splits.train.num_samples,
        history=tuple(history),
    )
    if end == config.steps:
        report = {
            "config": _config_json(config),
            "head_config": asdict(head_config),
            **{k: v for k, v in asdict(result).items() if k != "heads_dir"},
        }
        (config.out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        heads.to(getattr(torch, config.save_dtype)).save(result.heads_dir)
    return result
