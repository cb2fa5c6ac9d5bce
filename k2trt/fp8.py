"""Block-FP8 weights as K2 stores them.

A weight ``W [out, in]`` is stored as ``float8_e4m3fn`` plus ``weight_scale_inv [ceil(out/B0), ceil(in/B1)]``
(float32), ``B = (128, 128)`` for K2. Despite its name, ``weight_scale_inv`` is the *dequantization multiplier*:
``real = fp8 * scale_inv[block]`` (DeepSeek-V3 ``inference/kernel.py`` ``weight_dequant``). Edge blocks are
partial: ``kv_a_proj_with_mqa`` is [576, 7168], so its scale is [5, 56] and the last row-block holds 64 rows.

Quantization picks ``scale = amax(|block|) / 448`` (e4m3's largest finite value), so the block's largest
element maps to ±448 and nothing saturates; values are rounded to nearest-even by the dtype cast. An all-zero
block gets scale 1.0: any positive scale dequantizes it exactly to zero, and a zero scale would make the
checkpoint look corrupt to ``inspect`` (which rejects non-positive scales).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn value (OCP FP8 spec, E4M3 with NaN-only S.1111.111)
DEFAULT_BLOCK = (128, 128)


def __getattr__(name: str):
    # FP8_DTYPE (torch.float8_e4m3fn) resolved on first use, so importing this module does not import torch: the
    # fp8_block converter needs only scale_shape, and torch's import would be most of its start-up
    if name == "FP8_DTYPE":
        import torch

        return torch.float8_e4m3fn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def scale_shape(shape: tuple[int, int] | torch.Size, block: tuple[int, int] = DEFAULT_BLOCK) -> tuple[int, int]:
    """Shape of ``weight_scale_inv`` for a weight of ``shape`` ([out, in])."""
    return (math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1]))


def _pad_to_blocks(x: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    import torch

    out, inn = x.shape
    po, pi = -out % block[0], -inn % block[1]
    return torch.nn.functional.pad(x, (0, pi, 0, po)) if po or pi else x


def quantize_block_fp8(
    w: torch.Tensor, block: tuple[int, int] = DEFAULT_BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``w [out, in]`` to (``fp8 [out, in]``, ``scale_inv [ceil(out/B0), ceil(in/B1)]`` float32)."""
    import torch

    if w.dim() != 2:
        raise ValueError(f"block-FP8 quantizes 2-D weights, got shape {tuple(w.shape)}")
    out, inn = w.shape
    x = _pad_to_blocks(w.to(torch.float32), block)
    so, si = scale_shape(w.shape, block)
    blocks = x.view(so, block[0], si, block[1])  # [so, B0, si, B1]
    amax = blocks.abs().amax(dim=(1, 3))  # [so, si]
    if not torch.isfinite(amax).all():
        raise ValueError("cannot quantize a weight that holds NaN or Inf")
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (blocks / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    q = q.view(so * block[0], si * block[1])[:out, :inn].contiguous()
    return q, scale.contiguous()


def expand_scale(scale_inv: torch.Tensor, shape: tuple[int, int], block: tuple[int, int] = DEFAULT_BLOCK) -> torch.Tensor:
    """Per-element multiplier ``[out, in]`` from a block scale (partial edge blocks cut to ``shape``)."""
    full = scale_inv.repeat_interleave(block[0], dim=0).repeat_interleave(block[1], dim=1)
    return full[: shape[0], : shape[1]]


def dequantize_block_fp8(
    w_fp8: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int] = DEFAULT_BLOCK,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``real = fp8 * scale_inv[block]``, computed in float32 and returned as ``dtype`` (default float32)."""
    import torch

    if w_fp8.dim() != 2:
        raise ValueError(f"block-FP8 weights are 2-D, got shape {tuple(w_fp8.shape)}")
    want = scale_shape(w_fp8.shape, block)
    if tuple(scale_inv.shape) != want:
        raise ValueError(
            f"weight_scale_inv has shape {tuple(scale_inv.shape)}, expected {list(want)} for a weight of shape "
            f"{list(w_fp8.shape)} with {list(block)} blocks"
        )
    real = w_fp8.to(torch.float32) * expand_scale(scale_inv.to(torch.float32), tuple(w_fp8.shape), block)
    return real.to(dtype or torch.float32)
