#!/usr/bin/env python
"""Regenerate build_configs/*.yaml, scripts/launch/* and docs/plans.md from the planner.

Usage: .venv/bin/python scripts/gen_build_configs.py [--check]
--check writes nothing and exits 1 if any generated file differs from what is checked in.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from k2trt.build_config import generate_all  # noqa: E402


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for rel, text in generate_all().items():
        path = ROOT / rel
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(str(rel))
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if path.suffix == ".sh":
                path.chmod(0o755)
    for rel in stale:
        print(("stale: " if check else "wrote ") + rel)
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
