#!/usr/bin/env python3
"""Compare a prior's unconditional samples with its data on the statistics that matter, and write them into the
model card (``MODEL_CARD.md``'s "Samples against data" section, ``prior_statistics.png``, and
``sample_statistics`` in ``training_summary.json`` beside the weights).

    python scripts/prior_card_statistics.py --prior-config configs/prior/ns64.yaml --problem navier_stokes
    python scripts/prior_card_statistics.py --prior-config configs/prior/blackhole64.yaml --problem blackhole

Navier–Stokes: the vorticity energy spectrum E(k) of the samples against training fields and held-out test
fields of ``--data-root`` (scripts/generate_navier_stokes.py makes it). Black holes: ring diameter, width,
asymmetry, background level and the fraction of samples with a noisy background, against the synthetic
training and test images (``diffinv.datasets.blackhole_synthetic``). ``scripts/export_prior.py`` runs the same.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffinv.diffusion import karras_sigmas, sample_sde  # noqa: E402
from diffinv.prior_statistics import card_section, replace_card_section  # noqa: E402


def reference_data(problem: str, data_root: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, held-out test) images in the prior's units."""
    if problem == "navier_stokes":
        from diffinv.datasets.navier_stokes import load_split, read_manifest

        scale = float(read_manifest(data_root).get("scale", 10.0))
        split = lambda s: torch.from_numpy(load_split(data_root, s)[:count]).float() / scale  # noqa: E731
        return split("train"), split("test")
    from diffinv.datasets.blackhole_synthetic import SyntheticBlackHoles

    gen = SyntheticBlackHoles()
    split = lambda s: torch.from_numpy(gen.images(s, list(range(count)))).float()  # noqa: E731
    return split("train"), split("test")


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def update_card(prior, problem: str, out_dir: Path, data_root: str = "data/navier_stokes_64",
                num_samples: int = 64, sample_steps: int = 32, num_reference: int = 256, seed: int = 0) -> dict:
    """Draw ``num_samples`` prior samples (EDM Heun), compare them with the data, update the card in ``out_dir``."""
    with torch.no_grad():
        samples = sample_sde(prior, (num_samples, *prior.event_shape), karras_sigmas(sample_steps, 0.002, 80.0),
                             "edm", 0.0, "heun", torch.Generator().manual_seed(seed))
    training, truth = reference_data(problem, data_root, num_reference)
    section, figures = card_section(problem, samples, training, out_dir, truth=truth)
    card = out_dir / "MODEL_CARD.md"
    _write(card, replace_card_section(card.read_text() if card.is_file() else "", section))
    summary = out_dir / "training_summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        data["sample_statistics"] = figures
        _write(summary, json.dumps(data, indent=2) + "\n")
    return figures


def main(argv: list[str] | None = None) -> int:
    from diffinv.priors import load_prior
    from lightning_modules.threads import apply_threads

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prior-config", required=True)
    p.add_argument("--checkpoint", default=None, help="weights (default: the prior config's)")
    p.add_argument("--problem", required=True, choices=("navier_stokes", "blackhole"))
    p.add_argument("--out", type=Path, default=None, help="the model card's folder (default: the weights' folder)")
    p.add_argument("--data-root", default="data/navier_stokes_64", help="Navier–Stokes dataset folder")
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--sample-steps", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    apply_threads(args.threads)
    prior = load_prior(args.prior_config, args.checkpoint)
    out = args.out or Path(prior.checkpoint).parent
    figures = update_card(prior, args.problem, out, args.data_root, args.num_samples, args.sample_steps)
    print(json.dumps(figures, indent=2))
    print(f"updated {out / 'MODEL_CARD.md'} and {out / 'prior_statistics.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
