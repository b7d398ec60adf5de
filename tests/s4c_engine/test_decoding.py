"""Decode loop on tiny random models: plain greedy == HF generate, speculative greedy == plain
greedy (both head kinds, static and dynamic trees, batch 1 and ragged batches), stopping,
seeded repeatability and cancellation."""

from __future__ import annotations

import pytest
import torch

from s4c_engine import decoding
from s4c_engine.attention import GQA_SDPA, register_attention
from s4c_engine.config import SamplingParams
from s4c_engine.context_memory import RowContext
from s4c_engine.decoding import DecodeOutput, DecodeRequest, decode_batch
from s4c_engine.drafting import TreeShape
from s4c_engine.heads import Context
from s4c_engine.stopping import StopRule
from s4c_engine.target import Target
from s4c_engine.tree import TreeSpec
from s4c_engine.tree_policy import TreePolicy
from tests.model_fixtures import ARCHS, available_devices, random_heads, tiny_model

PROMPTS = [[1, 5, 9, 3, 4, 7], [1, 8, 2], [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 11], [7]]
STATIC_SPEC = TreeSpec(((0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 0, 0)))
DYNAMIC = TreePolicy(
    ((1, TreeShape(nodes=12, depth=4, top_k=3)), (8, TreeShape(nodes=6, depth=3, top_k=2)))
)
STATIC = TreePolicy(((8, TreeShape(nodes=STATIC_SPEC.num_nodes, spec=STATIC_SPEC)),))


def _requests(
    prompts: list[list[int]],
    max_tokens: int = 24,
    eos: frozenset[int] = frozenset(),
    params: SamplingParams | None = None,
) -> list[DecodeRequest]:
    params = params or SamplingParams(max_tokens=max_tokens)
    rule = StopRule(eos, max_tokens)
    return [DecodeRequest(tuple(p), params, rule) for p in prompts]


def _ids(outputs: list[DecodeOutput]) -> list[list[int]]:
    return [list(o.token_ids) for o in outputs]


def _hf_greedy(model: torch.nn.Module, prompt: list[int], max_tokens: int) -> list[int]:
    device = next(model.parameters()).device
    out = model.generate(
        torch.tensor([prompt], device=device),
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("arch", ARCHS)
def test_plain_greedy_equals_hf_generate_alone_and_in_ragged_batch(arch: str, device: str) -> None:
    model = tiny_model(arch, device=device)
    target = Target(model)
    expected = [_hf_greedy(model, p, 24) for p in PROMPTS]
    assert _ids(decode_batch(target, _requests(PROMPTS[:1]))) == expected[:1]
    assert _ids(decode_batch(target, _requests(PROMPTS))) == expected


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("policy", [DYNAMIC, STATIC], ids=["dynamic", "static"])
@pytest.mark.parametrize("kind", ["s4c", "medusa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_speculative_greedy_equals_plain_greedy(
    arch: str, kind: str, policy: TreePolicy, device: str
) -> None:
    model = tiny_model(arch, device=device)
    target = Target(model)
    heads = random_heads(model, kind).to(device)
    plain = _ids(decode_batch(target, _requests(PROMPTS)))
    batch = decode_batch(target, _requests(PROMPTS), heads=heads, policy=policy, adaptive=False)
    assert _ids(batch) == plain
    alone = [decode_batch(target, _requests([p]), heads=heads, policy=policy)[0] for p in PROMPTS]
    assert [list(o.token_ids) for o in alone] == plain
    # The batch really speculated, and its rows accepted different amounts.
    taus = [o.stats.tau for o in batch]
    assert max(taus) > 1.2 and len({round(t, 6) for t in taus}) > 1


@pytest.mark.parametrize("arch", ARCHS)
def test_heads_on_fused_layer_features_are_exact(arch: str) -> None:
    model = tiny_model(arch, seed=2)
    target = Target(model)
    heads = random_heads(model, "s4c", feature_layers=(0, 1))
    plain = _ids(decode_batch(target, _requests(PROMPTS)))
    spec = decode_batch(target, _requests(PROMPTS), heads=heads, policy=DYNAMIC, adaptive=False)
    assert _ids(spec) == plain
    assert max(o.stats.tau for o in spec) > 1.0
    # The target captured the layers for the heads and drops them again for plain decoding.
    assert target.feature_layers == (0, 1)
    assert _ids(decode_batch(target, _requests(PROMPTS))) == plain
    assert target.feature_layers == ()


@pytest.mark.parametrize("arch", ARCHS)
def test_cpu_attention_decodes_what_transformers_generates(arch: str) -> None:
    """The attention `Target.load` gives CPU models (grouped K/V heads without copies): plain
    and speculative greedy decoding both equal HF generate on the stock model."""
    stock = tiny_model(arch)
    expected = [_hf_greedy(stock, p, 24) for p in PROMPTS]
    model = tiny_model(arch)
    model.set_attn_implementation(register_attention())
    assert model.config._attn_implementation == GQA_SDPA
    target = Target(model)
    heads = random_heads(model, "s4c")
    assert _ids(decode_batch(target, _requests(PROMPTS))) == expected
    spec = decode_batch(target, _requests(PROMPTS), heads=heads, policy=DYNAMIC, adaptive=False)
    assert _ids(spec) == expected
    assert max(o.stats.tau for o in spec) > 1.2


def test_identity_start_heads_are_exact_too() -> None:
    model = tiny_model("llama", seed=3)
    target = Target(model)
    heads = random_heads(model, "s4c", scale=0.0)
    assert _ids(decode_batch(target, _requests(PROMPTS), heads=heads, policy=DYNAMIC)) == _ids(
        decode_batch(target, _requests(PROMPTS))
    )


def test_eos_and_max_tokens_stop_each_row_at_the_plain_position() -> None:
    model = tiny_model("qwen2")
    target = Target(model)
    heads = random_heads(model, "s4c")
    plain = _ids(decode_batch(target, _requests(PROMPTS, max_tokens=30)))
    eos = plain[0][5]  # a token row 0 emits at step 6
    for h in (None, heads):
        outs = decode_batch(
            target, _requests(PROMPTS, max_tokens=30, eos=frozenset({eos})), heads=h, policy=DYNAMIC
        )
        for o, full in zip(outs, plain):
            if eos in full:
                cut = full.index(eos) + 1
                assert list(o.token_ids) == full[:cut] and o.finish_reason == "stop"
            else:
                assert list(o.token_ids) == full and o.finish_reason == "length"
    short = decode_batch(target, _requests(PROMPTS, max_tokens=3), heads=heads, policy=DYNAMIC)
    assert [len(o.token_ids) for o in short] == [3] * len(PROMPTS)


def test_stop_string_ends_at_the_token_that_completes_it() -> None:
    model = tiny_model("llama")
    target = Target(model)
    plain = _ids(decode_batch(target, _requests(PROMPTS[:1], max_tokens=20)))[0]

    def decode(ids: list[int] | tuple[int, ...]) -> str:
        return "".join(f"<{i}>" for i in ids)

    stop = f"<{plain[6]}><{plain[7]}>"
    first = next(i for i in range(1, len(plain)) if stop in decode(plain[: i + 1]))
    rule = StopRule(frozenset(), 20, (stop,))
    for heads in (None, random_heads(model)):
        out = decode_batch(
            target,
            [DecodeRequest(tuple(PROMPTS[0]), SamplingParams(), rule)],
            heads=heads,
            policy=DYNAMIC,
            decode=decode,
        )[0]
        assert list(out.token_ids) == plain[: first + 1] and out.finish_reason == "stop"


def test_seeded_sampling_repeats_and_seeds_differ() -> None:
    model = tiny_model("llama")
    target = Target(model)
    heads = random_heads(model)

    def run(seed: int) -> list[list[int]]:
        params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, seed=seed)
        return _ids(
            decode_batch(target, _requests(PROMPTS, 16, params=params), heads=heads, policy=DYNAMIC)
        )

    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("kind", ["s4c", "medusa"])
def test_seeded_sampling_gives_the_same_tokens_with_or_without_speculation(
    kind: str, device: str
) -> None:
    """Draws are tied to token positions, so the tree (or none) does not change the sample."""
    model = tiny_model("qwen2", device=device)
    target = Target(model)
    params = SamplingParams(max_tokens=20, temperature=0.9, top_k=20, seed=11)
    plain = _ids(decode_batch(target, _requests(PROMPTS, 20, params=params)))
    spec = decode_batch(
        target,
        _requests(PROMPTS, 20, params=params),
        heads=random_heads(model, kind),
        policy=DYNAMIC,
        adaptive=False,
    )
    assert _ids(spec) == plain
    assert max(o.stats.tau for o in spec) > 1.1  # drafts were accepted


def test_should_stop_cancels_unfinished_rows() -> None:
    model = tiny_model("llama")
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    outs = decode_batch(Target(model), _requests(PROMPTS, 20), should_stop=should_stop)
    assert {o.finish_reason for o in outs} == {"cancelled"}
    assert all(0 < len(o.token_ids) < 20 for o in outs)


@pytest.mark.parametrize("attention", ["sdpa", GQA_SDPA])
def test_tree_masked_logits_equal_sequential_logits(attention: str) -> None:
    """One verify forward over a tree == running each root-to-node path sequentially through
    the stock model (transformers' SDPA), with either attention function in the tree pass."""
    from s4c_engine.attention import build_step_mask
    from s4c_engine.kv_cache import RowKVCache
    from s4c_engine.tree import TreeBuffers, compile_tree
    from s4c_engine.verification import verify

    model = tiny_model("qwen2")
    stock = tiny_model("qwen2")
    model.set_attn_implementation(register_attention() if attention == GQA_SDPA else attention)
    target = Target(model)
    tree = compile_tree(STATIC_SPEC)
    prompts = [[1, 5, 9, 3], [2, 6]]
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (2, tree.num_nodes), generator=gen)
    cache = RowKVCache.allocate(model.config, 2, 64, device="cpu", dtype=torch.float32)

    with torch.inference_mode():
        for b, p in enumerate(prompts):  # fill the prefixes row by row (ragged lengths)
            one = RowKVCache.allocate(model.config, 1, 64, device="cpu", dtype=torch.float32)
            kv = one.begin_forward(len(p))
            mask = build_step_mask(
                one.lengths, kv, torch.ones(len(p), len(p)).tril().bool(), torch.float32
            )
            target.forward(torch.tensor([p]), torch.arange(len(p))[None], mask, one)
            cache.storage[:, :, b] = one.storage[:, :, 0]
        cache.advance([len(p) for p in prompts])
        buffers = TreeBuffers(
            tokens,
            tree.parents.expand(2, -1),
            tree.depths.expand(2, -1),
            tree.ancestors.expand(2, -1, -1),
        )
        got = verify(target, cache, buffers).logits  # (B, N, V)
        for b, p in enumerate(prompts):
            for node in range(tree.num_nodes):
                path = [n for n in range(tree.num_nodes) if tree.ancestors[node, n]]
                seq = p + tokens[b, path].tolist()
                want = stock(torch.tensor([seq])).logits[0, -1]
                torch.testing.assert_close(got[b, node], want, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_cuda_speculative_matches_plain_mostly(arch: str) -> None:
    """bf16 rounding may flip near-ties, so compare a match rate, not exact equality."""
    model = tiny_model(arch, device="cuda", dtype=torch.bfloat16)
    target = Target(model)
    heads = random_heads(model, "s4c")
    plain = _ids(decode_batch(target, _requests(PROMPTS)))
    spec = _ids(decode_batch(target, _requests(PROMPTS), heads=heads, policy=DYNAMIC))
    same = sum(a == b for p, s in zip(plain, spec) for a, b in zip(p, s))
    assert same / sum(len(p) for p in plain) >= 0.8


@pytest.mark.parametrize("speculative", [False, True])
def test_waiting_requests_join_the_batch_as_rows_finish(speculative: bool) -> None:
    model = tiny_model("llama")
    target = Target(model)
    heads = random_heads(model) if speculative else None
    rule_lengths = [4, 20, 9, 14, 6]
    prompts = [*PROMPTS, [2, 4, 6]]
    requests = [
        DecodeRequest(tuple(p), SamplingParams(max_tokens=n), StopRule(frozenset(), n))
        for p, n in zip(prompts, rule_lengths)
    ]
    alone = [_ids(decode_batch(target, [r]))[0] for r in requests]
    outs = decode_batch(target, requests, heads=heads, policy=DYNAMIC, max_batch_size=2)
    assert _ids(outs) == alone
    assert [len(o.token_ids) for o in outs] == rule_lengths
    assert {o.stats.batch_size for o in outs} == {2}


def test_bf16_heads_on_an_fp32_target_still_decode_exactly() -> None:
    """Drafting precision never changes greedy output: only the target verifies."""
    model = tiny_model("llama")
    target = Target(model)
    heads = random_heads(model).to(torch.bfloat16)
    plain = _ids(decode_batch(target, _requests(PROMPTS)))
    spec = decode_batch(target, _requests(PROMPTS), heads=heads, policy=DYNAMIC)
    assert _ids(spec) == plain
    assert sum(o.stats.target_forwards for o in spec) < sum(len(p) for p in plain)


def test_prefill_groups_keep_padding_small_and_cover_every_row() -> None:
    from s4c_engine.decoding import prefill_groups

    lengths = [700, 12, 15, 690, 14, 300, 13]
    groups = prefill_groups(lengths, max_tokens=4096)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        widths = [lengths[i] for i in group]
        assert max(widths) * len(widths) <= max(4096, max(widths))
        assert sum(widths) >= 0.75 * max(widths) * len(widths)  # at most a quarter padding
    # short prompts are never padded to the long ones
    assert {frozenset(g) for g in groups} >= {frozenset({1, 2, 4, 6})}
    assert prefill_groups([5000], max_tokens=4096) == [[0]]  # one long prompt still runs


class _Collect:
    """A PositionObserver keeping every position's last hidden state per request."""

    feature_layers: tuple[int, ...] = ()

    def __init__(self, n: int) -> None:
        self.rows: list[list[torch.Tensor]] = [[] for _ in range(n)]

    def prompts(self, requests: list[int], hidden: torch.Tensor, lengths: list[int]) -> None:
        for b, (r, n) in enumerate(zip(requests, lengths)):
            self.rows[r].append(hidden[b, :n])

    def committed(
        self, requests: list[int], hidden: torch.Tensor, logits: torch.Tensor, counts: list[int]
    ) -> None:
        for b, (r, c) in enumerate(zip(requests, counts)):
            self.rows[r].append(hidden[b, :c])


@pytest.mark.parametrize("speculative", [False, True])
def test_observer_sees_every_committed_position_once_in_order(speculative: bool) -> None:
    model = tiny_model("llama")
    heads = random_heads(model) if speculative else None
    seen = _Collect(len(PROMPTS))
    outs = decode_batch(
        Target(model),
        _requests(PROMPTS, 12),
        heads=heads,
        policy=DYNAMIC,
        max_batch_size=2,
        observer=seen,
    )
    for r, (prompt, out) in enumerate(zip(PROMPTS, outs)):
        seq = prompt + list(out.token_ids)
        got = torch.cat(seen.rows[r])
        # every position but the last token, whose successor was never needed, plus at most
        # the tokens a last speculative step committed past the stop
        assert len(seq) - 1 <= len(got) <= len(seq) - 1 + 4
        with torch.no_grad():
            want = model(torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0]
        torch.testing.assert_close(got[: len(seq) - 1], want[: len(seq) - 1], atol=1e-4, rtol=1e-4)


def test_the_cache_has_slots_for_the_requests_not_for_the_batch_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A max_batch_size far above the request count must not allocate that many cache rows
    (a 64-slot cache made every one-prompt call allocate and zero gigabytes)."""
    from s4c_engine.kv_cache import RowKVCache

    slots: list[int | None] = []
    allocate = RowKVCache.allocate.__func__  # type: ignore[attr-defined]

    def spy(cls: type[RowKVCache], *args: object, **kwargs: object) -> RowKVCache:
        slots.append(kwargs.get("row_slots"))  # type: ignore[arg-type]
        return allocate(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(RowKVCache, "allocate", classmethod(spy))
    model = tiny_model("llama")
    outs = decode_batch(Target(model), _requests(PROMPTS[:2]), max_batch_size=64)
    assert slots == [2]
    assert len(outs) == 2


def test_context_heads_are_exact_and_remember_every_committed_position(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tiny_model("llama", seed=4)
    target = Target(model)
    heads = random_heads(model, "s4c", context_heads=2, context_start=2, scale=0.2)
    plain = _ids(decode_batch(target, _requests(PROMPTS)))
    spec = decode_batch(
        target, _requests(PROMPTS), heads=heads, policy=DYNAMIC, adaptive=False, max_batch_size=2
    )
    assert _ids(spec) == plain
    assert max(o.stats.tau for o in spec) > 1.0

    # The memory a row drafts from, built step by step, holds exactly the entries of its
    # committed positions (from context_start on) computed from one forward of the sequence.
    seen: list[RowContext] = []
    real = decoding.batch_context

    def spy(rows: list[RowContext]) -> Context:
        seen.append(rows[0])
        return real(rows)

    monkeypatch.setattr(decoding, "batch_context", spy)
    prompt = PROMPTS[0]
    out = decode_batch(target, _requests([prompt], 16), heads=heads, policy=DYNAMIC, adaptive=False)
    assert list(out[0].token_ids) == plain[0][:16]
    memory = seen[-1]
    assert all(m is memory for m in seen)  # one memory per row, grown in place
    seq = prompt + list(out[0].token_ids)
    with torch.no_grad():
        h = model(torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0]
    ends = len(seq) - 1  # position len(seq) - 1 has no successor yet
    keys, values = heads.context_entries(
        h[2:ends], torch.tensor(seq[2:ends]), torch.tensor(seq[3 : ends + 1])
    )
    n = ends - 2
    assert n <= memory.length <= n + 4  # a last step may commit a few positions past the stop
    torch.testing.assert_close(memory.keys[:n], keys, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(memory.values[:n], values, atol=1e-4, rtol=1e-4)
    # The context changes what the heads draft (the attention is not a no-op).
    ctx = real([memory])
    hidden, path = h[None, ends - 1 : ends], torch.tensor([[[seq[ends]]]])
    empty = Context(ctx.keys[:, :0], ctx.values[:, :0], ctx.mask[:, :, :0])
    assert not torch.allclose(
        heads.head_logits(0, hidden, path, ctx), heads.head_logits(0, hidden, path, empty)
    )
    # The sink is added once per tree (drafting) and the heads then use the context as is.
    once = heads.context.with_sink(ctx)  # type: ignore[union-attr]
    assert heads.context.with_sink(once) is once  # type: ignore[union-attr]
    torch.testing.assert_close(
        heads.head_logits(0, hidden, path, once), heads.head_logits(0, hidden, path, ctx)
    )
