"""Linear layers for verification-width forwards on CPUs: a packed fp32 AVX-512 kernel.

Verifying a draft tree runs the target over a few tokens per row (2..32 rows of x). On a CPU
such a product should cost about what one token costs (every weight is read once either
way), but stock BLAS kernels for skinny fp32 matrices run two to three times slower than that,
which eats most of what speculation saves. `NarrowLinear` replaces a model's `nn.Linear`
(the public module tree, as quantisation libraries do; no modeling code is forked): inputs
of `min_rows..max_rows` rows go through our kernel (`csrc/narrow_linear.cpp`, weights packed
once into 16-column panels), all others (prefill, training) through the stock `F.linear` on
the same weight. Results equal `F.linear` up to fp32 summation order.

`min_rows` is 1 by default, so one-token decoding goes through it too. On the Xeon (Sapphire Rapids) VM the
stock one-row product ran at about the kernel's speed, but on an AMD EPYC VM the stock
products were 2-3x slower at every width (SmolLM2's 49152x576 lm_head: 9.9 ms per one-row
call vs 3.1 ms), so plain decoding (`ar`, the baseline every measured speedup divides by)
ran at half speed there.

The kernel is compiled on first use (torch's C++ extension builder, cached in torch's
extension directory); without AVX-512 or a compiler the model keeps its stock layers.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import cast

import torch
from torch import nn
from torch.nn import functional

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "narrow_linear.cpp"
EXTENSION_NAME = "s4c_narrow_linear"


def load_kernel() -> ModuleType | None:
    """The compiled kernel module, or None (logged) where this CPU or machine cannot run it."""
    capability = torch.backends.cpu.get_cpu_capability()
    if "AVX512" not in capability:
        log.info("CPU capability %s has no AVX-512: stock linear layers", capability)
        return None
    from torch.utils.cpp_extension import load

    _put_ninja_on_path()
    try:
        kernel: ModuleType = load(
            name=EXTENSION_NAME,
            sources=[str(SOURCE)],
            # -fopenmp: at::parallel_for is inline OpenMP, serial without it
            extra_cflags=["-O3", "-mavx512f", "-mfma", "-fopenmp"],  # bf16: a function attribute
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except (RuntimeError, OSError, ImportError) as exc:  # no compiler, no ninja, build error
        log.warning("narrow linear kernel unavailable (%s): stock linear layers", exc)
        return None
    return kernel


def _put_ninja_on_path() -> None:
    """torch builds with the `ninja` it finds on PATH; a venv that was not activated has its
    pip-installed ninja (a dependency) beside the interpreter only, so point PATH there."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = os.pathsep.join([str(ninja.BIN_DIR), os.environ.get("PATH", "")])


class NarrowLinear(nn.Module):
    """An `nn.Linear` (or any module with `weight` (N, K), `bias`, `in_features` and
    `out_features`, such as the heads' vocabulary projection) whose few-row inputs use the
    packed kernel.

    Shares `weight` and `bias` with the layer it replaces (tied embeddings stay tied) and
    holds the packed copy (a frozen buffer: inference only, on the CPU). bf16=True packs the
    weight in bf16 and sums in fp32 (draft heads: their precision never changes the output);
    outputs are fp32 either way.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    packed: torch.Tensor  # non-persistent buffer

    def __init__(
        self,
        linear: nn.Module,
        kernel: ModuleType,
        min_rows: int = 1,
        max_rows: int = 32,
        bf16: bool = False,
    ) -> None:
        super().__init__()
        weight = linear.weight
        if not isinstance(weight, torch.Tensor) or weight.device.type != "cpu":
            raise ValueError("NarrowLinear needs a layer on the CPU")
        if not bf16 and weight.dtype != torch.float32:
            raise ValueError("the fp32 kernel needs an fp32 layer")
        self.weight = weight
        self.bias = cast("torch.Tensor | None", linear.bias)  # a Linear's bias: a tensor or None
        self.in_features = int(weight.shape[1])
        self.out_features = int(weight.shape[0])
        self.kernel = kernel
        self.min_rows = min_rows
        self.max_rows = max_rows
        self.bf16 = bf16
        pack = kernel.pack_weight_bf16 if bf16 else kernel.pack_weight
        self.register_buffer("packed", pack(weight.detach()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if not self.min_rows <= rows <= self.max_rows or (
            torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        ):
            return functional.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, self.in_features)
        y: torch.Tensor
        if self.bf16:
            y = self.kernel.narrow_linear_bf16(flat, self.packed, self.out_features)
        else:
            y = self.kernel.narrow_linear(flat.contiguous(), self.packed, self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def use_narrow_linears(
    model: nn.Module,
    kernel: ModuleType,
    *,
    min_rows: int = 1,
    max_rows: int = 32,
    bf16: bool = False,
    types: tuple[type[nn.Module], ...] = (nn.Linear,),
) -> int:
    """Replace every CPU module of `types` in `model` (lm_head included) by a NarrowLinear;
    with bf16=False only fp32 layers are replaced. Returns how many were replaced."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, types) or isinstance(child, NarrowLinear):
                continue
            weight = child.weight
            if not isinstance(weight, torch.Tensor) or weight.device.type != "cpu":
                continue
            if not bf16 and weight.dtype != torch.float32:
                continue
            setattr(parent, name, NarrowLinear(child, kernel, min_rows, max_rows, bf16))
            count += 1
    return count


def main() -> None:
    """`python -m s4c_engine.narrow_linear`: build (or find) the kernel now, so the first
    engine load does not wait for the compiler; says whether this CPU can use it."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kernel = load_kernel()
    print(f"narrow linear kernel: {'ready' if kernel is not None else 'unavailable'}")


if __name__ == "__main__":
    main()
