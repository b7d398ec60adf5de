"""Self-distillation data: the frozen target answers training prompts; we record what it saw.

For every answer we keep the prompt and answer token ids (JSONL index) and, per stored
position j, the target's final hidden state h_j (post final norm, the lm_head input, fp16),
the residual stream after each decoder layer in `feature_layers` (fp16, `layer<i>` tensors) and
its top-k logits, where h_j is the state whose lm_head output predicts token j + 1. That
is the whole feature cache: training never runs the target again. The features are recorded
while the target answers (a `PositionObserver` on the engine's batched decoding: the prefill
yields the prompt positions, each decode step the position it commits), so nothing is
computed twice. Shards are appended, so a stopped run resumes by skipping ids already in the
index. Greedy decoding only.
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
    batch_size: int = 48  # rows decoding together while answering
    block_size: int = 768  # prompts per shard (a stopped run redoes at most one block)
    max_new_tokens: int = 160
    max_prompt_tokens: int = 768
    top_k: int = 32
    feature_layers: tuple[int, ...] = ()  # decoder layers whose outputs are kept too
    answers: bool = True  # False: no answers, only the prompts' own positions are stored
    prompt_positions: bool = True  # store prompt positions too (not just answer positions)
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


class FeatureRecorder:
    """A `PositionObserver` that keeps, per request, the features and top-k logits of the
    positions from starts[r] on (fp16 / int32, on the CPU), as `distill_block` stores them."""

    def __init__(
        self, target: Target, starts: list[int], top_k: int, feature_layers: tuple[int, ...]
    ) -> None:
        self.target = target
        self.starts = starts
        self.top_k = top_k
        self.feature_layers = feature_layers
        self.hidden: list[list[torch.Tensor]] = [[] for _ in starts]
        self.values: list[list[torch.Tensor]] = [[] for _ in starts]
        self.ids: list[list[torch.Tensor]] = [[] for _ in starts]

    def prompts(self, requests: list[int], hidden: torch.Tensor, lengths: list[int]) -> None:
        kept = [hidden[b, self.starts[r] : n] for b, (r, n) in enumerate(zip(requests, lengths))]
        flat = torch.cat(kept)  # (M, F)
        values, ids = [], []
        for chunk in flat.split(2048):  # type: ignore[no-untyped-call]  # bounded (chunk, V) logits
            v, i = self.target.logits(chunk).float().topk(self.top_k, dim=-1)
            values.append(v)
            ids.append(i)
        self._keep(requests, [len(k) for k in kept], flat, torch.cat(values), torch.cat(ids))

    def committed(
        self, requests: list[int], hidden: torch.Tensor, logits: torch.Tensor, counts: list[int]
    ) -> None:
        values, ids = logits.float().topk(self.top_k, dim=-1)  # (B, A, k)
        flat = [(b, a) for b, c in enumerate(counts) for a in range(c)]
        rows = torch.tensor([b for b, _ in flat])
        cols = torch.tensor([a for _, a in flat])
        self._keep(requests, counts, hidden[rows, cols], values[rows, cols], ids[rows, cols])

    def _keep(
        self,
        requests: list[int],
        counts: list[int],
        hidden: torch.Tensor,
        values: torch.Tensor,
        ids: torch.Tensor,
    ) -> None:
        # torch leaves Tensor.split unannotated
        h = hidden.to(torch.float16).cpu().split(counts)  # type: ignore[no-untyped-call]
        v = values.to(torch.float16).cpu().split(counts)  # type: ignore[no-untyped-call]
        i = ids.to(torch.int32).cpu().split(counts)  # type: ignore[no-untyped-call]
        for r, hr, vr, ir in zip(requests, h, v, i):
            self.hidden[r].append(hr)
            self.values[r].append(vr)
            self.ids[r].append(ir)

    def output(self, prompts: list[list[int]], answers: list[list[int]]) -> BatchOutput:
        """The stored positions of every request: [starts[r], len(prompt + answer) - 1), the
        last token predicting nothing that was kept."""
        d = int(self.target.config.hidden_size)
        out = BatchOutput(answers, [], [], [], {i: [] for i in self.feature_layers}, [])
        for r, (prompt, answer) in enumerate(zip(prompts, answers)):
            n = len(prompt) + len(answer) - 1 - self.starts[r]
            hidden = torch.cat(self.hidden[r])[:n]
            out.hidden.append(hidden[:, :d].contiguous())
            for j, layer in enumerate(self.feature_layers):
                out.layers[layer].append(hidden[:, d * (j + 1) : d * (j + 2)].contiguous())
            out.topk_values.append(torch.cat(self.values[r])[:n])
            out.topk_ids.append(torch.cat(self.ids[r])[:n])
            out.starts.append(self.starts[r])
        return out


def distill_block(
    target: Target,
    prompts: list[list[int]],
    starts: list[int],
    *,
    eos_ids: set[int],
    max_new_tokens: int,
    max_batch_size: int,
    top_k: int,
    feature_layers: tuple[int, ...] = (),
    answers: bool = True,
) -> BatchOutput:
    """The target's own greedy answers (EOS included when reached) to `prompts`, by the
    engine's plain batched decoding (finished rows leave, waiting prompts join), with the
    features of every position from starts[r] on recorded on the way. answers=False only
    prefills: the prompts' own positions, no answers."""
    new_tokens = max_new_tokens if answers else 1
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0)
    rule = StopRule(frozenset(eos_ids), new_tokens, ())
    recorder = FeatureRecorder(target, starts, top_k, feature_layers)
    outputs = decode_batch(
        target,
        [DecodeRequest(tuple(ids), params, rule) for ids in prompts],
        max_batch_size=max_batch_size,
        observer=recorder,
    )
    texts = [list(out.token_ids) if answers else [] for out in outputs]
    return recorder.output(prompts, texts)


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
    for first in range(0, len(encoded), config.block_size):
        # Similar lengths together: less prefill padding, similar cache lengths per step.
        items = sorted(encoded[first : first + config.block_size], key=lambda e: len(e.ids))
        prompts = [item.ids for item in items]
        starts = [
            min(header, len(p) - 1) if config.prompt_positions else len(p) - 1 for p in prompts
        ]
        out = distill_block(
            target,
            prompts,
            starts,
            eos_ids=eos_ids,
            max_new_tokens=config.max_new_tokens,
            max_batch_size=config.batch_size,
            top_k=config.top_k,
            feature_layers=config.feature_layers,
            answers=config.answers,
        )
        write_shard(config.out_dir, f"shard-{shard_no:06d}.safetensors", items, out)
        shard_no += 1
        made += len(items)
        tokens += sum(len(a) for a in out.answers)
        positions += sum(int(h.shape[0]) for h in out.hidden)
        bar.update(len(items))
        seconds = time.perf_counter() - start
        bar.set_postfix(answer_tok_s=f"{tokens / seconds:.1f}", pos_s=f"{positions / seconds:.0f}")
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
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--block-size", type=int, default=768)
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
