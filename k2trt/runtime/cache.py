"""The paged MLA cache: per token per layer only the latent and the rope key.

One tensor per layer, ``[num_blocks, block_size, kv_lora_rank + qk_rope_head_dim]`` (576 values for K2, the
layout FlashMLA and TensorRT-LLM's MLA kernels read). A sequence owns a list of blocks (its block table); its
token ``p`` lives at ``(table[p // block_size], p % block_size)``. Bytes per token, as allocated:
``layers x (kv_lora_rank + qk_rope_head_dim) x dtype bytes`` = 70,272 for K2 in bf16, 35,136 in FP8, against
the 2.5 MB per token of a per-head K/V cache.
"""

from __future__ import annotations

import math

import torch

from k2trt.config import K2Config
from k2trt.errors import K2Error


class BlockAllocator:
    """Free-list of cache block ids."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first

    @property
    def free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise K2Error(f"cache has {len(self._free)} free blocks, {n} requested")
        return [self._free.pop() for _ in range(n)]

    def release(self, blocks: list[int]) -> None:
        self._free.extend(reversed(blocks))


class PagedMLACache:
    """Latent + rope-key cache for ``layers`` (this rank's pipeline stage) in fixed-size blocks."""

    def __init__(self, cfg: K2Config, *, num_blocks: int, block_size: int, layers: range, dtype: torch.dtype,
                 device: str | torch.device = "cpu"):
        if num_blocks < 1 or block_size < 1:
            raise K2Error(f"cache needs positive num_blocks and block_size, got {num_blocks} and {block_size}")
        self.cfg, self.block_size, self.layers, self.dtype = cfg, block_size, layers, dtype
        self.width = cfg.kv_lora_rank + cfg.qk_rope_head_dim
        self.kv = {
            layer: torch.zeros(num_blocks, block_size, self.width, dtype=dtype, device=device) for layer in layers
        }
        self.allocator = BlockAllocator(num_blocks)

    @property
    def bytes_per_token(self) -> int:
        """Bytes one cached token takes over this cache's layers, as allocated."""
        per_layer = next(iter(self.kv.values()))
        return len(self.kv) * per_layer[0, 0].numel() * per_layer.element_size()

    @property
    def capacity_tokens(self) -> int:
        return self.allocator.num_blocks * self.block_size

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_size)

    def slots(self, table: list[int], start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(block ids, offsets) of positions [start, end) of a sequence with block ``table``."""
        pos = torch.arange(start, end)
        return torch.tensor(table, dtype=torch.long)[pos // self.block_size], pos % self.block_size

    def write(self, layer: int, blocks: torch.Tensor, offsets: torch.Tensor, latent: torch.Tensor,
              k_rope: torch.Tensor) -> None:
        """Store ``latent [N, C]`` and ``k_rope [N, R]`` of N tokens at their slots."""
        self.kv[layer][blocks, offsets] = torch.cat((latent, k_rope), dim=-1).to(self.dtype)

    def read_rows(self, layer: int, table: list[int], length: int) -> torch.Tensor:
        """The first ``length`` cached tokens of a sequence: ``[S, kv_lora_rank + qk_rope_head_dim]``."""
        nb = self.blocks_for(length)
        return self.kv[layer][torch.tensor(table[:nb], dtype=torch.long)].reshape(-1, self.width)[:length]
