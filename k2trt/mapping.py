"""Parallel topology as data: which rank owns which heads, experts, expert-width slice and layers.

Rank numbering is TensorRT-LLM's ``Mapping`` (``tensorrt_llm/mapping.py``, 1.2.x line, checked against its source;
context parallelism and MoE clusters are 1 here): ``tp_rank = rank % tp``, ``pp_rank = rank // tp``; the MoE split of
a TP group puts consecutive TP ranks in one EP group: ``moe_ep_rank = tp_rank % moe_ep``,
``moe_tp_rank = tp_rank // moe_ep``. ``pp_layers`` is ``torch.tensor_split(arange(layers), pp)``: contiguous stages,
the first ``layers % pp`` stages take one extra layer. ``ep_experts`` gives EP rank ``i`` the contiguous block
``[i * E / moe_ep, (i + 1) * E / moe_ep)``.

One deliberate difference: TensorRT-LLM's ``Mapping(tp_size=N)`` with neither MoE size given means ``moe_tp = N``,
``moe_ep = 1``; here it means ``moe_ep = N`` (pure expert parallelism, what K2 deployments use). Both sizes are
always written explicitly (:meth:`Mapping.to_trtllm`), so a checkpoint never depends on either default.

Worked example, ``Mapping(tp=4, pp=2, moe_ep=2)`` (so ``moe_tp=2``), K2 (61 layers, 384 experts, 64 heads)::

    rank  tp_rank pp_rank moe_ep_rank moe_tp_rank  layers     heads    experts     expert width
      0      0       0        0           0        [0, 31)   [0, 16)  [0, 192)    [0, 1024)
      1      1       0        1           0        [0, 31)   [16, 32) [192, 384)  [0, 1024)
      2      2       0        0           1        [0, 31)   [32, 48) [0, 192)    [1024, 2048)
      5      1       1        1           0        [31, 61)  [16, 32) [192, 384)  [0, 1024)

Rank groups of the same example (TensorRT-LLM's docstring layout): tp groups [0 1 2 3] [4 5 6 7]; pp groups
[0 4] [1 5] [2 6] [3 7]; moe_ep groups [0 1] [2 3] [4 5] [6 7]; moe_tp groups [0 2] [1 3] [4 6] [5 7].
"""

from __future__ import annotations

from dataclasses import dataclass

from k2trt.errors import K2Error


@dataclass(frozen=True)
class Mapping:
    """A TP x PP grid; the TP group's MoE is split ``moe_tp x moe_ep``.

    ``moe_ep`` defaults to ``tp`` (pure expert parallelism, what K2 deployments use), ``moe_tp`` to ``tp // moe_ep``.
    """

    tp: int = 1
    pp: int = 1
    moe_ep: int | None = None
    moe_tp: int | None = None

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "moe_ep", "moe_tp"):
            v = getattr(self, name)
            if v is None and name.startswith("moe"):
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise K2Error(f"mapping: {name} must be a positive integer, got {v!r}")
        ep = self.tp if self.moe_ep is None and self.moe_tp is None else self.moe_ep
        if ep is None:
            ep = self.tp // self.moe_tp if self.tp % self.moe_tp == 0 else 0
        mtp = self.moe_tp if self.moe_tp is not None else (self.tp // ep if self.tp % ep == 0 else 0)
        if not ep or not mtp or ep * mtp != self.tp:
            given = " x ".join(f"{n} ({v})" for n, v in (("moe_ep", self.moe_ep), ("moe_tp", self.moe_tp)) if v)
            raise K2Error(f"mapping: {given} does not fit tp ({self.tp}): moe_ep x moe_tp must equal tp")
        object.__setattr__(self, "moe_ep", ep)
        object.__setattr__(self, "moe_tp", mtp)

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    def ranks(self) -> range:
        return range(self.world_size)

    def tp_rank(self, rank: int) -> int:
        self._check(rank)
        return rank % self.tp

    def pp_rank(self, rank: int) -> int:
        self._check(rank)
        return rank // self.tp

    def moe_ep_rank(self, rank: int) -> int:
        return self.tp_rank(rank) % self.moe_ep

    def moe_tp_rank(self, rank: int) -> int:
        return self.tp_rank(rank) // self.moe_ep

    def is_first_stage(self, rank: int) -> bool:
        """Holds the embedding (TensorRT-LLM ``is_first_pp_rank``)."""
        return self.pp_rank(rank) == 0

    def is_last_stage(self, rank: int) -> bool:
        """Holds the final norm and lm_head (TensorRT-LLM ``is_last_pp_rank``)."""
        return self.pp_rank(rank) == self.pp - 1

    def layers(self, rank: int, num_layers: int) -> range:
        """Layers of this rank's pipeline stage: contiguous, earlier stages take the remainder."""
        if num_layers < self.pp:
            raise K2Error(f"mapping: pp ({self.pp}) exceeds the model's {num_layers} layers")
        stage = self.pp_rank(rank)
        base, extra = divmod(num_layers, self.pp)
        start = stage * base + min(stage, extra)
        return range(start, start + base + (1 if stage < extra else 0))

    def heads(self, rank: int, num_heads: int) -> range:
        """Attention heads of this rank (heads split evenly over tp)."""
        if num_heads % self.tp:
            raise K2Error(f"mapping: tp ({self.tp}) does not divide the {num_heads} attention heads")
        n = num_heads // self.tp
        return range(self.tp_rank(rank) * n, (self.tp_rank(rank) + 1) * n)

    def experts(self, rank: int, num_experts: int) -> range:
        """Routed experts of this rank: a contiguous block per EP rank."""
        if num_experts % self.moe_ep:
            raise K2Error(f"mapping: moe_ep ({self.moe_ep}) does not divide the {num_experts} routed experts")
        n = num_experts // self.moe_ep
        return range(self.moe_ep_rank(rank) * n, (self.moe_ep_rank(rank) + 1) * n)

    def expert_width(self, rank: int, width: int) -> range:
        """Slice of each expert's intermediate width this rank computes (MoE tensor parallelism)."""
        if width % self.moe_tp:
            raise K2Error(f"mapping: moe_tp ({self.moe_tp}) does not divide the expert width {width}")
        n = width // self.moe_tp
        return range(self.moe_tp_rank(rank) * n, (self.moe_tp_rank(rank) + 1) * n)

    def _check(self, rank: int) -> None:
        if not isinstance(rank, int) or not 0 <= rank < self.world_size:
            raise K2Error(f"mapping: rank {rank} outside world size {self.world_size}")

    def to_trtllm(self) -> dict[str, int]:
        """The ``mapping`` object of a TensorRT-LLM checkpoint ``config.json`` (keys of its ``Mapping.to_dict``)."""
        return {
            "world_size": self.world_size, "tp_size": self.tp, "pp_size": self.pp,
            "moe_tp_size": self.moe_tp, "moe_ep_size": self.moe_ep,
            "cp_size": 1, "moe_cluster_size": 1, "attn_tp_size": self.tp, "attn_cp_size": 1,
        }
