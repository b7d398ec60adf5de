"""Self-distillation data: the frozen target answers training prompts; we record what it saw.

For every answer we keep the prompt and answer token ids (JSONL index) and, per answer
position j, the target's final hidden state h_j (post final norm, the lm_head input, fp16) and
its top-k logits, where h_j is the state whose lm_head output predicts answer token j. That
is the whole feature cache: training never runs the target again. Shards are appended, so a
stopped run resumes by skipping ids already in the index. Greedy decoding only.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from s4c_engine.config import ChatMessage, Prompt
from s4c_engine.prompting import PromptCodec
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
    batch_size: int = 16
    max_new_tokens: int = 160
    max_prompt_tokens: int = 768
    top_k: int = 32
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


def length_sorted_batches(
    items: list[EncodedPrompt], batch_size: int, block: int = 8
) -> Iterator[list[EncodedPrompt]]:
    """Batches of similar prompt length (less left padding), keeping the mix order in blocks."""
    span = batch_size * block
    for start in range(0, len(items), span):
        chunk = sorted(items[start : start + span], key=lambda e: len(e.ids))
        for b in range(0, len(chunk), batch_size):
            yield chunk[b : b + batch_size]


@dataclass(frozen=True)
class BatchOutput:
    """Per row: answer ids, hidden states (n, D) fp16, top-k logit values and ids (n, k)."""

    answers: list[list[int]]
    hidden: list[torch.Tensor]
    topk_values: list[torch.Tensor]
    topk_ids: list[torch.Tensor]


@torch.inference_mode()
def generate_batch(
    model: nn.Module,
    batch: list[list[int]],
    *,
    pad_id: int,
    eos_ids: set[int],
    max_new_tokens: int,
    top_k: int,
) -> BatchOutput:
    """Greedy answers for a left-padded batch, recording the lm_head inputs and top-k logits.

    A forward pre-hook on the output embedding captures its input at every step: HF generate
    computes logits for the last position only, so each call gives (B, 1, D) after prefill's
    (B, 1, D) too, i.e. exactly the states that predict each answer token.
    """
    device = next(model.parameters()).device
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, ids in enumerate(batch):
        input_ids[r, width - len(ids) :] = torch.tensor(ids)
        mask[r, width - len(ids) :] = 1
    states: list[torch.Tensor] = []

    def capture(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        states.append(args[0][:, -1].to(torch.float16).cpu())

    handle = model.get_output_embeddings().register_forward_pre_hook(capture)  # type: ignore[operator]
    try:
        out = model.generate(  # type: ignore[operator]
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=sorted(eos_ids),
            return_dict_in_generate=True,
            output_logits=True,
        )
    finally:
        handle.remove()
    seqs = out.sequences[:, width:].cpu()  # (B, steps)
    logits = torch.stack([s.float().cpu() for s in out.logits], dim=1)  # (B, steps, V)
    hidden = torch.stack(states[: logits.shape[1]], dim=1)  # (B, steps, D)
    values, ids = logits.topk(top_k, dim=-1)
    result = BatchOutput([], [], [], [])
    for r in range(len(batch)):
        answer: list[int] = []
        for tok in seqs[r].tolist():
            answer.append(tok)
            if tok in eos_ids:
                break
        n = len(answer)
        result.answers.append(answer)
        result.hidden.append(hidden[r, :n].clone())
        result.topk_values.append(values[r, :n].to(torch.float16).clone())
        result.topk_ids.append(ids[r, :n].to(torch.int32).clone())
    return result


def write_shard(
    out_dir: Path, shard_name: str, items: list[EncodedPrompt], out: BatchOutput
) -> None:
    """Write the shard tensors, then append the index records (so the index never lies)."""
    shard_dir = out_dir / SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "hidden": torch.cat(out.hidden),
            "topk_values": torch.cat(out.topk_values),
            "topk_ids": torch.cat(out.topk_ids),
        },
        str(shard_dir / shard_name),
    )
    offset = 0
    with (out_dir / INDEX_FILE).open("a", encoding="utf-8") as fh:
        for item, answer in zip(items, out.answers):
            record = {
                "id": item.row.id,
                "category": item.row.category,
                "prompt_ids": item.ids,
                "answer_ids": answer,
                "shard": shard_name,
                "offset": offset,
            }
            fh.write(json.dumps(record) + "\n")
            offset += len(answer)


def run_distill(config: DistillConfig) -> int:
    """Generate until every prompt of the mix is answered (or `limit` new ones); return count."""
    from transformers import AutoModelForCausalLM

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    codec = PromptCodec.load(config.model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(config.model_dir), dtype=torch.float32)
    model.to(config.device).eval()
    eos_ids = set(codec.eos_token_ids)
    pad = model.generation_config.pad_token_id
    pad_id = pad if pad is not None else min(eos_ids)

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
    made = 0
    tokens = 0
    start = time.perf_counter()
    bar = tqdm(total=len(encoded), desc="distill", unit="prompt")
    for batch in length_sorted_batches(encoded, config.batch_size):
        out = generate_batch(
            model,
            [item.ids for item in batch],
            pad_id=int(pad_id),
            eos_ids=eos_ids,
            max_new_tokens=config.max_new_tokens,
            top_k=config.top_k,
        )
        write_shard(config.out_dir, f"shard-{shard_no:06d}.safetensors", batch, out)
        shard_no += 1
        made += len(batch)
        tokens += sum(len(a) for a in out.answers)
        bar.update(len(batch))
        bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.1f}")
    bar.close()
    return made


def main(argv: list[str] | None = None) -> None:
    """`python -m s4c_engine.training.distill --model-dir ... --train-dir ... --out-dir ...`"""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--train-dir", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--per-category", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--max-prompt-tokens", type=int, default=768)
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_distill(DistillConfig(**vars(args)))


if __name__ == "__main__":
    main()
