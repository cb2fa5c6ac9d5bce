"""Fixtures shared across the suite: synthetic checkpoints are written once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Triton fixes compiled-vs-interpreted when a kernel module is first imported: decide before any test imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The test models are tiny: a second intra-op thread buys nothing and, on a shared 2-core box (and with the
# multi-process tests' ranks), OpenMP spin-waits make every small op many times slower.
torch.set_num_threads(1)

from k2trt.synth import synthesize  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "kimi-k2-reference"


@pytest.fixture(scope="session")
def k2_reference_dir() -> Path:
    if not (REFERENCE / "config.json").is_file():
        pytest.fail(f"the K2 reference files are missing: {REFERENCE} (shared/ must sit beside the repo)")
    return REFERENCE


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """The default tiny preset: K2 layout, block-FP8, 3 shards."""
    return synthesize(out=tmp_path_factory.mktemp("ckpt") / "tiny", preset="tiny", seed=0, shards=3)


@pytest.fixture(scope="session")
def tiny_ckpt_split_scales(tmp_path_factory) -> Path:
    """Every FP8 scale in the shard after its weight."""
    return synthesize(out=tmp_path_factory.mktemp("ckpt") / "split", preset="tiny", seed=1, shards=3,
                      split_scales=True)
