"""Generate the Navier–Stokes prior's training fields (command line of
:func:`diffinv.datasets.navier_stokes.generate_dataset`; the recipe and the layout are documented there).

    python scripts/generate_navier_stokes.py --resolution 128 --num-train 20480 --num-val 10 \\
        --num-test 100 --out data/navier_stokes_128 [--seed 0] [--shard-size 256] [--burn-in 5.0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffinv.datasets.navier_stokes import generate_dataset  # noqa: E402
from lightning_modules.threads import apply_threads  # noqa: E402

def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, choices=(64, 128), default=128)
    p.add_argument("--num-train", type=int, default=20480)
    p.add_argument("--num-val", type=int, default=10)
    p.add_argument("--num-test", type=int, default=100)
    p.add_argument("--out", required=True, help="output folder (created; re-runs resume)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--burn-in", type=float, default=5.0, help="evolution time from the random field to x0")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="solver precision")
    p.add_argument("--batch-size", type=int, default=None, help="fields per solver call (default: shard on GPU, 16 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1: measured fastest for these "
                   "grids, see the README's 'Threads')")
    args = p.parse_args(argv)
    apply_threads(args.threads)
    m = generate_dataset(args.out, resolution=args.resolution, num_train=args.num_train, num_val=args.num_val,
                         num_test=args.num_test, seed=args.seed, shard_size=args.shard_size, burn_in=args.burn_in,
                         device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    print(f"wrote {sum(m['counts'].values())} fields to {args.out} in {m['seconds_last_run']} s")


if __name__ == "__main__":
    main()
