"""The engine facade: load a model (and draft heads), generate for a list of prompts.

Thin on purpose: it validates and encodes prompts, groups them into batches of similar length,
calls `decoding.decode_batch` and turns ids back into text. The decode loop lives in
decoding.py, the algorithm pieces in drafting/verification/kv_cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from s4c_engine.config import (
    GenerationResult,
    Method,
    ModelInfo,
    Prompt,
    SamplingParams,
)
from s4c_engine.datastore import CONFIG_FILE as DATASTORE_CONFIG
from s4c_engine.datastore import AnswerDatastore
from s4c_engine.decoding import DecodeOutput, DecodeRequest, decode_batch
from s4c_engine.errors import PromptError
from s4c_engine.heads import DraftHeads
from s4c_engine.prompting import PromptCodec, read_model_info
from s4c_engine.stopping import StopRule, cut_at_stop_string
from s4c_engine.target import DTYPES, Target
from s4c_engine.tree_policy import CPU_POLICY, GPU_POLICY, PLAIN_POLICY, TreePolicy, TreeTuner

log = logging.getLogger(__name__)

HEADS_DATA = Path(__file__).parent / "heads_data"


def shipped_heads_path(model_name: str, kind: str) -> Path:
    """Where heads shipped with the package live: heads_data/<model name>/<kind>/."""
    return HEADS_DATA / model_name / kind


def _draft_with_narrow_kernels(heads: DraftHeads) -> None:
    """CPU heads: their linears and vocabulary projection through the narrow kernel, in bf16
    where the CPU has AVX512-BF16 (drafting is as memory-bound as verification, and its
    precision never changes the output), for any row count up to a large tree's frontier."""
    from s4c_engine.heads import VocabProjection
    from s4c_engine.narrow_linear import load_kernel, use_narrow_linears

    kernel = load_kernel()
    if kernel is None or heads.draft_lm_head.device.type != "cpu":
        return
    use_narrow_linears(
        heads,
        kernel,
        max_rows=64,
        bf16=bool(kernel.has_bf16()),
        types=(torch.nn.Linear, VocabProjection),
    )


class Engine:
    """A target model, optional draft heads, and the policy choosing tree sizes."""

    def __init__(
        self,
        target: Target,
        codec: PromptCodec,
        info: ModelInfo,
        heads: DraftHeads | None,
        policy: TreePolicy,
        max_batch_size: int,
        datastore: AnswerDatastore | None = None,
    ) -> None:
        self.target = target
        self.codec = codec
        self.info = info
        self.heads = heads
        self.policy = policy
        self.max_batch_size = max_batch_size
        self.datastore = datastore
        # What the TreeTuner measured in earlier calls: one call per request (the bench at
        # batch 1, small chunks) would otherwise spend its first steps trying every candidate
        # tree and choose from a handful of noisy steps.
        self._tuners: dict[TreePolicy, TreeTuner] = {}

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        heads_path: Path | None = None,
        method: Method = "s4c",
        device: str = "cpu",
        dtype: str = "float32",
        max_batch_size: int = 16,
        policy: TreePolicy | None = None,
        narrow_kernels: bool | None = None,
        draft_dtype: str | None = None,
        datastore_path: Path | None = None,
    ) -> Engine:
        """Load a HF causal-LM directory; heads from heads_path, else the shipped ones for
        `method`, else plain decoding (logged). HeadsMismatchError for heads of another model.
        policy: tree sizes by batch size (default: the measured CPU or GPU table).
        narrow_kernels: few-row products (tree verification, small batches) through
        `narrow_linear` (default: on the CPU in fp32). draft_dtype: the heads' dtype
        (default the target's); drafting is lossless whatever its precision.
        datastore_path: an answer datastore (`s4c_engine.datastore`) for a second lookup chain
        per row (policies with lookup; default none).
        """
        model_dir = Path(model_dir)
        info = read_model_info(model_dir, model_dir.name)
        if narrow_kernels is None:
            narrow_kernels = device == "cpu" and dtype == "float32"
        target = Target.load(model_dir, device=device, dtype=dtype, narrow_kernels=narrow_kernels)
        heads = None
        if method != "ar":
            path = heads_path if heads_path is not None else shipped_heads_path(info.name, method)
            if (Path(path) / "head_config.json").is_file():
                heads = DraftHeads.load(Path(path), target.model, info.name).eval()
                if draft_dtype is not None:
                    heads = heads.to(DTYPES[draft_dtype])
                if narrow_kernels:
                    _draft_with_narrow_kernels(heads)
            else:
                log.warning("no %s draft heads at %s; falling back to plain decoding", method, path)
        if policy is None:
            policy = GPU_POLICY if torch.device(device).type == "cuda" else CPU_POLICY
            if method == "medusa":  # the Medusa-1 baseline drafts from its heads alone
                policy = policy.without_lookup()
        datastore = None
        if datastore_path is not None and method != "ar" and policy.uses_lookup:
            if not (Path(datastore_path) / DATASTORE_CONFIG).is_file():
                raise FileNotFoundError(f"no answer datastore at {datastore_path}")
            datastore = AnswerDatastore.load(Path(datastore_path), info.name, info.vocab_size)
        return cls(
            target, PromptCodec.load(model_dir), info, heads, policy, max_batch_size, datastore
        )

    @property
    def method(self) -> str:
        return self.heads.config.kind if self.heads is not None else "ar"

    @property
    def device(self) -> str:
        return str(self.target.device)

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: Sequence[SamplingParams],
        *,
        method: Method | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[GenerationResult]:
        """Generate for every prompt; results in input order.

        method="ar" forces plain decoding (the measured baseline); None uses the loaded
        method. All prompts are validated first: PromptError names the first bad one.
        """
        if len(prompts) != len(params):
            raise ValueError("prompts and params must have the same length")
        requests = [self.request(i, p, sp) for i, (p, sp) in enumerate(zip(prompts, params))]
        speculative = method != "ar" and self.heads is not None
        heads = self.heads if speculative else None
        policy = self.policy if speculative else PLAIN_POLICY
        # Similar prompt lengths decode together: less padding in each prefill.
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt_ids))
        results = decode_batch(
            self.target,
            [requests[i] for i in order],
            heads=heads,
            policy=policy,
            decode=self.codec.decode,
            should_stop=should_stop,
            max_batch_size=self.max_batch_size,
            datastore=self.datastore if speculative else None,
            tuner=self._tuners.setdefault(policy, TreeTuner(policy)) if speculative else None,
        )
        outputs = dict(zip(order, results))
        return [self._result(outputs[i], params[i]) for i in range(len(requests))]

    def request(self, index: int, prompt: Prompt, params: SamplingParams) -> DecodeRequest:
        """Encode and check one prompt (PromptError names it by `index`) into a DecodeRequest."""
        ids = self.codec.encode(prompt)
        if not ids:
            raise PromptError(index, "the prompt has no tokens")
        if len(ids) >= self.info.max_context:
            raise PromptError(
                index,
                f"{len(ids)} prompt tokens leave no room in the "
                f"{self.info.max_context}-token context",
            )
        if min(ids) < 0 or max(ids) >= self.info.vocab_size:
            raise PromptError(index, "token id outside the vocabulary")
        max_tokens = min(params.max_tokens, self.info.max_context - len(ids))
        rule = StopRule(frozenset(self.codec.eos_token_ids), max_tokens, params.stop)
        return DecodeRequest(tuple(ids), params, rule)

    def _result(self, output: DecodeOutput, params: SamplingParams) -> GenerationResult:
        text = cut_at_stop_string(self.codec.decode(output.token_ids), params.stop)
        return GenerationResult(output.token_ids, text, output.finish_reason, output.stats)
