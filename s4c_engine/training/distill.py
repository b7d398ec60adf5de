"""Self-distillation data: the frozen target answers training prompts; we record what it saw.

For every answer we keep the prompt and answer token ids (JSONL index) and, per answer
position j, the target's final hidden state h_j (post final norm, the lm_head input, fp16),
the residual stream after each decoder layer in `feature_layers` (fp16, `layer<i>` tensors) and
its top-k logits, where h_j is the state whose lm_head output predicts answer token j. That
is the whole feature cache: training never runs the target again. Shards are appended, so a
stopped run resumes by skipping ids already in the index. Greedy decoding only.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from s4c_engine.config import ChatMessage, Prompt, SamplingParams
from s4c_engine.decoding import DecodeRequest, decode_batch
from s4c_engine.prompting import PromptCodec
from s4c_engine.stopping import StopRule
from s4c_engine.target import Target
from s4c_engine.training.prompts import TrainPrompt, balanced_mix, read_train_prompts

log = logging.getLogger(__name__)

INDEX_FILE = "index.jsonl"
SHARD_DIR = "shards"


@dataclass(frozen=True)
class DistillConfig:
    """One self-distillation run. `out_dir` holds `index.jsonl` and `shards/*.safetensors`."""

    model_dir: Path
    train_dir: Path
    out_dir: Path
    per_category: int = 1500
    seed: int = 0
    batch_size: int = 32  # rows decoding together while answering
    max_new_tokens: int = 160
    max_prompt_tokens: int = 768
    top_k: int = 32
    feature_layers: tuple[int, ...] = ()  # decoder layers whose outputs are kept too
    answers: bool = True  # False: no answers, only the prompts' own positions are stored
    prompt_positions: bool = True  # store prompt positions too (not just answer positions)
    forward_tokens: int = 8192  # padded tokens per teacher-forced forward
    dtype: str = "float32"  # "bfloat16" is ~4x faster on CPUs with AMX (noisier features)
    limit: int | None = None  # answer at most this many new prompts in this call
    max_samples: int | None = None  # stop once the index holds this many samples
    threads: int | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class EncodedPrompt:
    row: TrainPrompt
    ids: list[int]


def load_done_ids(out_dir: Path) -> set[str]:
    """Ids already in the index (a record is written only after its shard is on disk)."""
    index = out_dir / INDEX_FILE
    if not index.exists():
        return set()
    done = set()
    with index.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                done.add(json.loads(line)["id"])
    return done


def encode_prompts(
    codec: PromptCodec, rows: list[TrainPrompt], max_len: int
) -> list[EncodedPrompt]:
    """Chat-template each prompt as the engine does (one user turn, generation prompt
    appended); drop prompts longer than `max_len` tokens."""
    out = []
    for row in rows:
        ids = codec.encode(Prompt(messages=(ChatMessage("user", row.prompt),)))
        if len(ids) <= max_len:
            out.append(EncodedPrompt(row, ids))
    return out


@dataclass(frozen=True)
class BatchOutput:
    """Per row: answer ids, and per stored position (n of them) the final hidden state (n, D)
    fp16, top-k logit values and ids (n, k), and per captured decoder layer its outputs (n, D)
    fp16. `starts[r]` is the first stored position of row r (see `write_shard`)."""

    answers: list[list[int]]
    hidden: list[torch.Tensor]
    topk_values: list[torch.Tensor]
    topk_ids: list[torch.Tensor]
    layers: dict[int, list[torch.Tensor]]
    starts: list[int]


def prompt_header_length(codec: PromptCodec) -> int:
    """Tokens every chat-templated prompt starts with (system block, user turn opener): the
    positions before it predict boilerplate, so they are not stored."""
    a = codec.encode(Prompt(messages=(ChatMessage("user", "a"),)))
    b = codec.encode(Prompt(messages=(ChatMessage("user", "b"),)))
    same = 0
    while same < min(len(a), len(b)) and a[same] == b[same]:
        same += 1
    return same


def answer_greedily(
    target: Target,
    prompts: list[list[int]],
    *,
    eos_ids: set[int],
    max_new_tokens: int,
    max_batch_size: int,
) -> list[list[int]]:
    """The target's own greedy answers (EOS included when reached), by the engine's plain
    batched decoding: finished rows leave and waiting prompts join, so nothing is padded."""
    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
    rule = StopRule(frozenset(eos_ids), max_new_tokens, ())
    outputs = decode_batch(
        target,
        [DecodeRequest(tuple(ids), params, rule) for ids in prompts],
        max_batch_size=max_batch_size,
    )
    return [list(out.token_ids) for out in outputs]


@torch.inference_mode()
def teacher_forced(
    model: nn.Module,
    sequences: list[list[int]],
    starts: list[int],
    *,
    top_k: int,
    feature_layers: tuple[int, ...] = (),
    pad_id: int = 0,
) -> BatchOutput:
    """One forward over whole sequences (prompt + answer, right-padded, which a causal model
    never attends to): for positions j in [starts[r], len_r - 1) it records the final hidden
    state h_j (post final norm, the lm_head input), the top-k logits that predict token j+1
    and the residual stream after each decoder layer in `feature_layers`."""
    device = next(model.parameters()).device
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, seq in enumerate(sequences):
        input_ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
    captured: dict[int, torch.Tensor] = {}

    def capture_layer(i: int):  # type: ignore[no-untyped-def]
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            captured[i] = output[0] if isinstance(output, tuple) else output  # type: ignore[assignment]

        return hook

    decoder = model.base_model  # type: ignore[union-attr]
    handles = [decoder.layers[i].register_forward_hook(capture_layer(i)) for i in feature_layers]
    try:
        out = decoder(input_ids=input_ids.to(device), attention_mask=mask.to(device))
    finally:
        for handle in handles:
            handle.remove()
    hidden = out.last_hidden_state
    lm_head = model.get_output_embeddings()  # type: ignore[operator]
    result = BatchOutput([], [], [], [], {i: [] for i in feature_layers}, [])
    for r, seq in enumerate(sequences):
        lo, hi = starts[r], len(seq) - 1
        h = hidden[r, lo:hi]
        values, ids = lm_head(h).float().topk(top_k, dim=-1)
        result.hidden.append(h.to(torch.float16).cpu())
        result.topk_values.append(values.to(torch.float16).cpu())
        result.topk_ids.append(ids.to(torch.int32).cpu())
        for i in feature_layers:
            result.layers[i].append(captured[i][r, lo:hi].to(torch.float16).cpu())
        result.starts.append(lo)
    return result


def write_shard(
    out_dir: Path, shard_name: str, items: list[EncodedPrompt], out: BatchOutput
) -> None:
    """Write the shard tensors, then append the index records (so the index never lies).

    A record's stored positions are j in [start, len(prompt) + len(answer) - 1) of prompt +
    answer, position j predicting token j + 1: answer positions begin at j = len(prompt) - 1.
    """
    shard_dir = out_dir / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "hidden": torch.cat(out.hidden),
            "topk_values": torch.cat(out.topk_values),
            "topk_ids": torch.cat(out.topk_ids),
            **{f"layer{i}": torch.cat(v) for i, v in out.layers.items()},
        },
        str(shard_dir / shard_name),
    )
    offset = 0
    with (out_dir / INDEX_FILE).open("a", encoding="utf-8") as fh:
        for item, answer, start, h in zip(items, out.answers, out.starts, out.hidden):
            record = {
                "id": item.row.id,
                "category": item.row.category,
                "prompt_ids": item.ids,
                "answer_ids": answer,
                "start": start,
                "shard": shard_name,
                "offset": offset,
            }
            fh.write(json.dumps(record) + "\n")
            offset += int(h.shape[0])


def run_distill(config: DistillConfig) -> int:
    """Answer (or, with `answers=False`, only read) every prompt of the mix not yet in the
    index, `limit` new ones at most; return how many were added."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    codec = PromptCodec.load(config.model_dir)
    target = Target.load(config.model_dir, device=config.device, dtype=config.dtype)
    eos_ids = set(codec.eos_token_ids)
    header = prompt_header_length(codec)

    mix = balanced_mix(read_train_prompts(config.train_dir), config.per_category, config.seed)
    done = load_done_ids(config.out_dir)
    todo = [row for row in mix if row.id not in done]
    if config.max_samples is not None:
        todo = todo[: max(0, config.max_samples - len(done))]
    if config.limit is not None:
        todo = todo[: config.limit]
    encoded = encode_prompts(codec, todo, config.max_prompt_tokens)
    log.info(
        "%d done, %d to do (%d over the prompt limit)",
        len(done),
        len(encoded),
        len(todo) - len(encoded),
    )
    shard_no = (
        len(list((config.out_dir / SHARD_DIR).glob("*.safetensors")))
        if (config.out_dir / SHARD_DIR).exists()
        else 0
    )
    made = tokens = positions = 0
    start = time.perf_counter()
    bar = tqdm(total=len(encoded), desc="distill", unit="prompt")
    block = config.batch_size * 2
    for first in range(0, len(encoded), block):
        items = sorted(encoded[first : first + block], key=lambda e: len(e.ids))
        prompts = [item.ids for item in items]
        answers = (
            answer_greedily(
                target,
                prompts,
                eos_ids=eos_ids,
                max_new_tokens=config.max_new_tokens,
                max_batch_size=config.batch_size,
            )
            if config.answers
            else [[] for _ in items]
        )
        # Teacher forcing pads to the longest sequence of a slice: order by total length.
        order = sorted(range(len(items)), key=lambda i: len(prompts[i]) + len(answers[i]))
        items = [items[i] for i in order]
        prompts = [prompts[i] for i in order]
        answers = [answers[i] for i in order]
        sequences = [p + a for p, a in zip(prompts, answers)]
        starts = [
            min(header, len(p) - 1) if config.prompt_positions else len(p) - 1 for p in prompts
        ]
        out = _teacher_forced_in_slices(target.model, sequences, starts, config)
        out.answers.extend(answers)
        write_shard(config.out_dir, f"shard-{shard_no:06d}.safetensors", items, out)
        shard_no += 1
        made += len(items)
        tokens += sum(len(a) for a in answers)
        positions += sum(int(h.shape[0]) for h in out.hidden)
        bar.update(len(items))
        seconds = time.perf_counter() - start
        bar.set_postfix(answer_tok_s=f"{tokens / seconds:.1f}", pos_s=f"{positions / seconds:.0f}")
    bar.close()
    return made


def _teacher_forced_in_slices(
    model: nn.Module, sequences: list[list[int]], starts: list[int], config: DistillConfig
) -> BatchOutput:
    """`teacher_forced` over slices of at most `forward_tokens` padded tokens (`sequences`
    sorted by length, so a slice pads to its last sequence)."""
    merged = BatchOutput([], [], [], [], {i: [] for i in config.feature_layers}, [])
    first = 0
    while first < len(sequences):
        last = first + 1
        while (
            last < len(sequences)
            and (last + 1 - first) * len(sequences[last]) <= config.forward_tokens
        ):
            last += 1
        part = teacher_forced(
            model,
            sequences[first:last],
            starts[first:last],
            top_k=config.top_k,
            feature_layers=config.feature_layers,
        )
        merged.hidden.extend(part.hidden)
        merged.topk_values.extend(part.topk_values)
        merged.topk_ids.extend(part.topk_ids)
        merged.starts.extend(part.starts)
        for i in config.feature_layers:
            merged.layers[i].extend(part.layers[i])
        first = last
    return merged


def main(argv: list[str] | None = None) -> None:
    """`python -m s4c_engine.training.distill --model-dir ... --train-dir ... --out-dir ...`"""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--train-dir", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--per-category", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--max-prompt-tokens", type=int, default=768)
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--feature-layers",
        type=lambda s: tuple(int(x) for x in s.split(",") if x),
        default=(),
        help="comma-separated decoder layer indices whose outputs are stored too",
    )
    p.add_argument(
        "--no-answers",
        dest="answers",
        action="store_false",
        help="store only the prompts' own positions, answering nothing (cheap extra data)",
    )
    p.add_argument("--no-prompt-positions", dest="prompt_positions", action="store_false")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_distill(DistillConfig(**vars(args)))


if __name__ == "__main__":
    main()
