#!/usr/bin/env python3
"""Compare ``diffinv predict`` runs: one markdown / CSV table (sampler x problem x metric) and one figure
(error against wall time or NFE). The same as the ``diffinv-compare`` command; see
``lightning_modules/compare.py``.

    python scripts/compare.py outputs/benchmark_navier_stokes --metrics rel_l2 --out outputs/comparison
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_modules.compare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
