"""The narrow (few-row) fp32 linear kernel: equals F.linear, keeps weights tied, and a model
running through it still decodes speculatively exactly as plain greedy decoding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from s4c_engine.decoding import decode_batch
from s4c_engine.narrow_linear import NarrowLinear, load_kernel, use_narrow_linears
from s4c_engine.target import Target
from tests.model_fixtures import random_heads, tiny_model
from tests.s4c_engine.test_decoding import DYNAMIC, PROMPTS, _ids, _requests

HAS_AVX512 = "AVX512" in torch.backends.cpu.get_cpu_capability()
KERNEL = load_kernel()
needs_kernel = pytest.mark.skipif(
    not HAS_AVX512, reason="this CPU has no AVX-512: the model keeps stock linear layers"
)


@needs_kernel
def test_the_kernel_builds_where_the_cpu_has_avx512() -> None:
    assert KERNEL is not None  # a missing compiler or ninja must not hide behind a skip


@needs_kernel
@pytest.mark.parametrize(("out_features", "in_features"), [(576, 576), (192, 64), (100, 37)])
@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8, 9, 16, 17, 32, 33])
def test_narrow_linear_equals_f_linear(out_features: int, in_features: int, rows: int) -> None:
    torch.manual_seed(rows)
    layer = nn.Linear(in_features, out_features, bias=out_features == 100)
    narrow = NarrowLinear(layer, KERNEL)
    x = torch.randn(rows, in_features)
    with torch.inference_mode():
        got = narrow(x)
        want = layer(x)
        batched = narrow(x.expand(2, rows, in_features))  # leading dims are flattened
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(batched[1], want, atol=1e-4, rtol=1e-5)


@needs_kernel
def test_a_rows_result_does_not_depend_on_the_other_rows() -> None:
    layer = nn.Linear(576, 1536, bias=False)
    narrow = NarrowLinear(layer, KERNEL)
    x = torch.randn(12, 576)
    with torch.inference_mode():
        one = narrow(x[:1])  # a plain decoding step's product
        alone = narrow(x[:2])
        together = narrow(x)  # a verify step's
    assert torch.equal(one, together[:1])  # same summation order whatever the width
    assert torch.equal(alone, together[:2])


@needs_kernel
def test_replacing_linears_keeps_tied_weights_and_gradients_take_the_stock_path() -> None:
    model = tiny_model("llama")  # ties lm_head to the input embedding
    replaced = use_narrow_linears(model, KERNEL)
    assert replaced == 2 * 7 + 1  # two layers of q, k, v, o, gate, up, down, and lm_head
    head = model.get_output_embeddings()
    assert isinstance(head, NarrowLinear)
    assert head.weight is model.get_input_embeddings().weight
    x = torch.randn(4, 32, requires_grad=True)
    head(x).sum().backward()  # autograd through F.linear, never the kernel
    assert x.grad is not None


@needs_kernel
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_speculative_greedy_through_the_kernel_equals_plain_greedy(arch: str) -> None:
    stock = tiny_model(arch)
    plain = _ids(decode_batch(Target(stock), _requests(PROMPTS)))
    model = tiny_model(arch)
    use_narrow_linears(model, KERNEL)
    heads = random_heads(model)
    spec = _ids(decode_batch(Target(model), _requests(PROMPTS), heads=heads, policy=DYNAMIC))
    assert spec == plain


@needs_kernel
@pytest.mark.skipif(KERNEL is None or not KERNEL.has_bf16(), reason="no AVX512-BF16")
@pytest.mark.parametrize("rows", [1, 4, 9, 64])
def test_bf16_kernel_is_close_to_f_linear(rows: int) -> None:
    torch.manual_seed(rows)
    layer = nn.Linear(77, 300)
    narrow = NarrowLinear(layer, KERNEL, min_rows=1, max_rows=64, bf16=True)
    x = torch.randn(rows, 77)
    with torch.inference_mode():
        got, want = narrow(x), layer(x)
    assert got.dtype == torch.float32
    # bf16 operands, fp32 sums: within bf16's relative precision of the output scale
    assert float((got - want).abs().max()) < 0.02 * float(want.abs().max())


@needs_kernel
def test_heads_drafting_through_bf16_kernels_still_decode_exactly() -> None:
    from s4c_engine.heads import VocabProjection

    model = tiny_model("llama")
    plain = _ids(decode_batch(Target(model), _requests(PROMPTS)))
    heads = random_heads(model)
    swapped = use_narrow_linears(
        heads,
        KERNEL,
        min_rows=1,
        max_rows=64,
        bf16=bool(KERNEL.has_bf16()),
        types=(nn.Linear, VocabProjection),
    )
    assert swapped == 4 + 4 + 1  # input projections, one ResBlock per head, vocabulary
    spec = decode_batch(Target(model), _requests(PROMPTS), heads=heads, policy=DYNAMIC)
    assert _ids(spec) == plain
