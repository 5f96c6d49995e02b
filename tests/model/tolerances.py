"""Golden-test tolerances derived from float32 rounding, not tuned on one machine.

The golden tensors (tests/data/golden/README.md) are float32 outputs of the official code on one
CPU. zoomfeat computes the same functions with other kernels (diffusers, another BLAS, another
thread count or instruction set), so the two sides differ by rounding only: summation order,
fused multiply-adds, vectorised reductions. A bound must hold for any correct kernel on any CPU,
and still fail for a real error (a wrong weight, a wrong block or a wrong layout: relative errors
of 1e-3 and more -- ``test_unet.py::test_golden_bound_catches_a_perturbed_weight`` checks that).

Derivation (unit: ``EPS32 = 2**-23 ≈ 1.19e-7``, the spacing of float32 numbers at 1.0):

1. One dot product of length ``n`` (a Linear or conv output, fan-in ``n``) rounds each of its ``n``
   additions: the error is bounded by ``n * EPS32 * |x|·|w|`` in the worst case and grows like
   ``sqrt(n) * EPS32 * |x|·|w|`` in practice (rounding errors of random sign add in quadrature;
   Higham & Mary, "A new approach to probabilistic rounding error analysis", 2019). Different
   kernels only reorder the sum, so two correct kernels differ by this much.
2. In these networks every block is normalised (GroupNorm / LayerNorm before each conv,
   attention or MLP, softmax rows summing to 1), so ``|x|·|w|`` is of the order of the block's
   output and errors are carried from block to block with a gain of about one. After ``D``
   blocks the independent per-block errors add in quadrature: ``sqrt(D)``. The non-dot-product
   steps (the norms' mean and variance, exp in softmax, GELU/SiLU) add a few ``EPS32`` each,
   small against ``sqrt(n)`` for n >= 27.
3. Both sides round (ours and the reference's), and ``|x|·|w|`` can exceed the output by a small
   factor: a safety factor ``k = 2``.

So, for a tensor compared against a reference ``ref`` after ``D`` blocks whose widest dot
product has length ``n``::

    atol = k * EPS32 * max|ref| * sqrt(n * D)

Measured against this bound (``k = 2``), every golden comparison uses at most 0.1 of it on an
Intel Xeon (2.8 GHz, 1 and 2 threads), and the AMD EPYC failure of issue 9 (``input_blocks.2``
off by 2.15e-6, bound 2.6e-5) uses 0.08; scaling a single weight tensor by 1 + 1e-3 exceeds it
20 times (eps) to several hundred times (the block holding the weight).
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: float32 machine epsilon (spacing of float32 numbers at 1.0)
EPS32 = 2.0**-23
#: safety factor: both sides round, and |x|·|w| may exceed the output a little
K_SAFETY = 2.0


def f32_tol(ref: torch.Tensor, fan_in: int, depth: int = 1, k: float = K_SAFETY) -> float:
    """Absolute tolerance for comparing a float32 result with ``ref`` (see the module docstring).

    Args:
        ref: the reference tensor; its largest magnitude sets the scale.
        fan_in: length ``n`` of the widest dot product on the path (Linear in_features, conv
            in_channels * kh * kw).
        depth: number ``D`` of sequential (normalised) blocks between the shared input and ``ref``.
        k: safety factor.

    Returns:
        ``k * EPS32 * max|ref| * sqrt(fan_in * depth)``.
    """
    scale = ref.detach().abs().max().item()
    return k * EPS32 * scale * math.sqrt(fan_in * depth)


def widest_fan_in(*modules: nn.Module, tokens: int = 0) -> int:
    """Length of the widest dot product computed by ``modules``.

    Conv ``in_channels / groups * kh * kw``, Linear ``in_features``, attention ``embed_dim`` (the
    q·k products); an attention's weighted sum of values is a dot product over the ``tokens``
    attended (softmax weights summing to 1), so pass the longest sequence attended.
    """
    widths = [tokens]
    for m in modules:
        for sub in m.modules():
            if isinstance(sub, nn.Conv2d | nn.Linear):
                widths.append(sub.weight[0].numel())
            elif isinstance(sub, nn.MultiheadAttention):
                widths.append(sub.embed_dim)
    return max(widths)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference, computed in float64 (so the comparison itself adds no rounding)."""
    return (a.detach().double() - b.detach().double()).abs().max().item()
