"""Triton device functions shared by the kernels: exact rounding to float8_e4m3fn and to bfloat16.

Why not just ``x.to(tl.float8e4nv)``: Triton's interpreter (3.9) converts float32 to fp8 and to bf16 with its
own bit-twiddling that does not round to nearest-even (a mantissa carry is dropped: 1.98 becomes 1.0 in e4m3,
and the bf16 path truncates). Compiled code uses the hardware's round-to-nearest-even (``cvt.rn``). These
helpers round in float32/int32 arithmetic that is exact on both, so the value handed to the final cast is already
representable and every path (interpreter, compiled, the torch reference's RNE cast) agrees bit for bit.
"""

from __future__ import annotations

import triton
import triton.language as tl

FP8_MAX = 448.0  # largest finite float8_e4m3fn (OCP FP8 E4M3); same constant as k2trt.fp8.FP8_MAX


@triton.jit
def e4m3_rne(v):
    """float32 ``v`` -> float32 values on the float8_e4m3fn grid, round-to-nearest-even, saturated to +-448.

    e4m3fn has 3 mantissa bits and minimum normal exponent -6; subnormals continue the 2**-6 binade's spacing
    2**-9. So the spacing at |v| is ``2**(max(floor(log2|v|), -6) - 3)``; dividing by it (a power of two, exact)
    leaves an integer-or-half problem that ``floor(t + 0.5)`` plus a tie fix solves exactly for t < 16.
    """
    a = tl.minimum(tl.abs(v), 448.0)
    e = ((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127  # floor(log2 a); -127 for zero and fp32 subnormals
    e = tl.maximum(e, -6)
    inv_ulp = ((127 + 3 - e) << 23).to(tl.float32, bitcast=True)  # 2**(3 - e)
    ulp = ((127 - 3 + e) << 23).to(tl.float32, bitcast=True)  # 2**(e - 3)
    t = a * inv_ulp  # in [0, 16): exact
    r = (t + 0.5).to(tl.int32)  # floor for t >= 0 (t + 0.5 is exact below 15.5, and rounds to 16 above)
    tie = (r.to(tl.float32) - t) == 0.5
    r = tl.where(tie & ((r & 1) == 1), r - 1, r)
    q = r.to(tl.float32) * ulp
    return tl.where(v.to(tl.int32, bitcast=True) < 0, -q, q)  # the sign bit, so -0.0 stays -0.0 like torch's cast


@triton.jit
def to_bf16_rne(x):
    """float32 -> bfloat16 with round-to-nearest-even on every backend (see the module docstring)."""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # -65536 == 0xFFFF0000
    return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)


@triton.jit
def round_to(x, DTYPE: tl.constexpr):
    """Cast float32 ``x`` to the output dtype (bf16 rounded as above; fp32 and fp16 by the cast)."""
    if DTYPE == tl.bfloat16:
        return to_bf16_rne(x)
    else:
        return x.to(DTYPE)


@triton.jit
def mma(a, b, DOT_IEEE: tl.constexpr):
    """``tl.dot(a, b)`` with a float32 accumulator.

    ``DOT_IEEE``: upcast both operands to float32 and multiply in IEEE float32. Used for float32 inputs on GPU
    (Triton's default for fp32 is TF32, too coarse for router logits) and always under the interpreter, whose
    ``dot`` (Triton 3.9 ``interpreter.py`` ``create_dot``) multiplies bf16 operands as their raw uint16 bits.
    bf16 x bf16 products are exact in float32, so the upcast changes nothing numerically.
    """
    if DOT_IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)
