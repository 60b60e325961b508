"""Turn a ``diffinv fit`` run into a shipped prior: EMA weights only, their description, a loss-curve PNG, a
grid of unconditional samples next to training samples, and a model card.

    python scripts/export_prior.py --config configs/fit/ns64.yaml --run outputs/fit/ns64 \\
        --out checkpoints/ns64 --name ns64 --problem navier_stokes [--prior-config configs/prior/ns64.yaml] \\
        [--data "one paragraph on the training data"] [--cmap RdBu_r] [--num-images 16] [--sample-steps 32] \\
        [--notes limitations.md] [--stats-samples 64] [--data-root data/navier_stokes_64]

The weights file ``<name>.pt`` holds the network's state dict (the EMA copy that ``EMAWeightAveraging`` saved
under ``state_dict``), written atomically. ``<name>.prior.json`` describes it (``diffinv.priors.description``:
network class and arguments from the fit config, parameterisation, problem family, training-data shape and
statistics, size and SHA-256 of the weights); loading the weights checks them against it. Use it with
``diffinv.priors.load_prior(<prior config>)`` or ``diffinv predict --config <prior config> ...``. The card's
"Samples against data" section (scripts/prior_card_statistics.py) compares ``--stats-samples`` prior samples with
the data: E(k) spectra for Navier–Stokes, ring statistics and the noisy-background fraction for black holes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch import LightningDataModule, LightningModule  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import yaml  # noqa: E402

from diffinv.checkpoints import load_state_dict_into  # noqa: E402
from diffinv.diffusion import karras_sigmas, sample_sde  # noqa: E402
from diffinv.priors import PixelPrior  # noqa: E402
from diffinv.priors.description import description_path, make_description  # noqa: E402
from lightning_modules.cli import DiffinvCLI  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prior_card_statistics import update_card  # noqa: E402

PROBLEMS = ("navier_stokes", "blackhole", "image", "generic")   # diffinv.metrics.problem_kind


def _atomic_save(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:     # a file object: torch names the archive "archive", so the bytes (and the
        torch.save(obj, f)             # SHA-256 in the description) depend on the weights only
    os.replace(tmp, path)


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(run.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {k: sorted(dict(v).items()) for k, v in out.items()}


def _show(ax, img: torch.Tensor, cmap: str, title: str) -> None:
    ax.imshow(img[0].numpy(), cmap=cmap, vmin=-1 if cmap != "afmhot" else None, vmax=1 if cmap != "afmhot" else None)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--run", required=True, help="the fit run's default_root_dir (checkpoints/ and tensorboard/)")
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--cmap", default="RdBu_r")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--sample-steps", type=int, default=32)
    p.add_argument("--title", default=None, help="model card title")
    p.add_argument("--data", default="", help="model card and description: one paragraph on the training data")
    p.add_argument("--problem", required=True, choices=PROBLEMS, help="the problem family the prior is for")
    p.add_argument("--prior-config", default=None, help="the predict-side config of the prior (default: "
                   "configs/prior/<name>.yaml)")
    p.add_argument("--notes", type=Path, default=None, help="a markdown file appended to the card (limitations)")
    p.add_argument("--data-root", default="data/navier_stokes_64", help="Navier–Stokes fields for the card's spectra")
    p.add_argument("--stats-samples", type=int, default=64, help="prior samples for the card's statistics (0: none)")
    args = p.parse_args(argv)
    args.prior_config = args.prior_config or f"configs/prior/{args.name}.yaml"

    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    cli = DiffinvCLI(LightningModule, LightningDataModule, subclass_mode_model=True,
                     subclass_mode_data=True, run=False, args=["--config", args.config],
                     parser_kwargs={"parser_mode": "omegaconf"}, auto_configure_optimizers=False,
                     save_config_callback=None)
    network = cli.model.network
    parameterization = "vp_epsilon" if cli.model.loss_name == "vp_epsilon" else "edm"
    info = load_state_dict_into(network, ckpt)                          # EMA weights (state_dict), strict
    meta = torch.load(ckpt, map_location="cpu", weights_only=True)
    weights = out / f"{args.name}.pt"
    description_path(weights).unlink(missing_ok=True)     # describes the previous weights: rewritten below
    _atomic_save({k: v.detach().clone() for k, v in network.state_dict().items()}, weights)

    # loss curve
    scalars = _scalars(run / "tensorboard")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for tag in ("train/loss", "val/loss"):
        if tag in scalars:
            steps, vals = zip(*scalars[tag])
            ax.plot(steps, vals, label=tag, lw=1)
    ax.set_xlabel("optimiser step"), ax.set_ylabel("loss"), ax.set_yscale("log"), ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_curve.png", dpi=120)
    plt.close(fig)

    # unconditional samples (EDM Heun on the PF-ODE) next to training samples
    prior = PixelPrior(network, checkpoint=str(weights)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        samples = sample_sde(prior, (args.num_images, *prior.event_shape), karras_sigmas(args.sample_steps, 0.002, 80.0),
                             "edm", 0.0, "heun", g)
    dm = cli.datamodule
    dm.setup("fit")
    train = torch.stack([dm.train_dataset()[i] for i in range(args.num_images)])
    n = args.num_images
    fig, axes = plt.subplots(2, n, figsize=(n * 0.9, 2.2))
    for i in range(n):
        _show(axes[0, i], train[i].clamp(-1.5, 1.5), args.cmap, "train" if i == 0 else "")
        _show(axes[1, i], samples[i].clamp(-1.5, 1.5), args.cmap, "prior sample" if i == 0 else "")
    fig.tight_layout()
    fig.savefig(out / "samples_vs_training.png", dpi=120)
    plt.close(fig)

    train_loss = scalars.get("train/loss", [])
    val_loss = scalars.get("val/loss", [])
    summary = {
        "name": args.name, "config": args.config, "weights": weights.name, "global_step": int(meta.get("global_step", 0)),
        "parameters": sum(v.numel() for v in network.parameters()),
        "final_train_loss_mean_last_10": (sum(v for _, v in train_loss[-10:]) / max(1, len(train_loss[-10:])))
        if train_loss else None,
        "final_val_loss": val_loss[-1][1] if val_loss else None, "loaded": str(info),
        "sample_stats": {"mean": float(samples.mean()), "std": float(samples.std())},
        "train_stats": {"mean": float(train.mean()), "std": float(train.std())},
    }
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2))
    net_spec = yaml.safe_load(Path(args.config).read_text())["model"]["init_args"]["network"]
    description = make_description(
        weights, net_spec, parameterization, args.problem,
        {"description": args.data, "shape": list(prior.event_shape), "mean": summary["train_stats"]["mean"],
         "std": summary["train_stats"]["std"]},
        {"config": args.config, "run": str(run), "global_step": summary["global_step"],
         "parameters": summary["parameters"], "final_val_loss": summary["final_val_loss"],
         "exported_by": "scripts/export_prior.py"})
    description_path(weights).write_text(json.dumps(description, indent=2) + "\n")
    card = model_card(args, summary, cli.model.network)
    if args.notes is not None:
        card = card.rstrip("\n") + "\n\n" + args.notes.read_text().strip("\n") + "\n"
    (out / "MODEL_CARD.md").write_text(card)
    if args.stats_samples and args.problem in ("navier_stokes", "blackhole"):
        summary["sample_statistics"] = update_card(prior, args.problem, out, args.data_root, args.stats_samples,
                                                   args.sample_steps)
    print(json.dumps(summary, indent=2))


def model_card(args, summary: dict, network) -> str:
    val = summary["final_val_loss"]
    return f"""# {args.title or args.name}

| | |
|---|---|
| weights | `{summary['weights']}` (EMA weights only, a plain state dict; `torch.load(weights_only=True)`) |
| description | `{args.name}.prior.json`: network, parameterisation, problem family ({args.problem}), training data, SHA-256; checked at load time |
| network | `{type(network).__name__}` wrapping `{type(network.model).__name__}`, {summary['parameters']:,} parameters |
| prior config | `{args.prior_config}` (`diffinv predict --config {args.prior_config} ...`) |
| training config | `{summary['config']}` (`diffinv fit --config {summary['config']}`) |
| optimiser steps | {summary['global_step']} |
| final training loss (mean of the last 10 logged) | {summary['final_train_loss_mean_last_10']:.4f} |
| final validation loss (EMA weights) | {'n/a' if val is None else f'{val:.4f}'} |
| prior samples: mean / std | {summary['sample_stats']['mean']:.3f} / {summary['sample_stats']['std']:.3f} |
| training samples: mean / std | {summary['train_stats']['mean']:.3f} / {summary['train_stats']['std']:.3f} |

## Data

{args.data}

## Loss curve

![loss curve](loss_curve.png)

## Unconditional samples (EDM Heun, {args.sample_steps} steps) under training samples

![samples](samples_vs_training.png)

## Use

```python
import torch
from diffinv.priors import load_prior

prior = load_prior("{args.prior_config}")     # network + checkpoints/{args.name}/{summary['weights']}, checked
x = torch.randn(2, *prior.event_shape)
x0_hat = prior.denoise(x, 1.0)                 # E[x0 | x], x = x0 + 1.0 n
```

or `diffinv predict --config {args.prior_config} --config configs/problem/... --config configs/sampler/...`.

Exported from `{args.run}` by `scripts/export_prior.py`.
"""


if __name__ == "__main__":
    main()
