#!/usr/bin/env python
"""Benchmark ReSample against Latent-DPS (and unconditional DDIM) on one problem and one latent prior.

    python scripts/benchmark_resample.py --arch tiny                        # CPU, random weights, seconds
    python scripts/benchmark_resample.py --arch ffhq --device cuda \
        --checkpoint checkpoints/public/ldm_ffhq_vq4.ckpt --image data/ffhq/00000.png   # the paper's setting

Problem: x4 bicubic super-resolution (ReSample's SR task, Gaussian noise sigma 0.01 on [-1, 1]) of ``--image``, or,
without one, of an image in the decoder's range (``decode(z)`` for a random latent: with random weights only such
images can be fitted, so the residual is meaningful; PSNR is meaningful only with trained weights).

Reports, per method: wall time split into ``unet`` (denoiser forward / backward), ``decoder`` (decoder forward /
backward of the guidance steps and the final decode), ``optimisation`` (ReSample's hard-consistency and final
optimisers, their decoder / encoder calls included) and ``other``; network / forward / gradient counts; the
relative measurement residual ``||A x - y|| / ||y||`` and the PSNR against the truth. ``--json`` saves the rows.

Architectures (``--arch``): ``tiny`` (16 x 16 images, 8 x 8 latents, the test prior), ``small`` (64 x 64 images,
16 x 16 latents: the LDM fixture layout), ``ffhq`` (the published ffhq-ldm-vq-4: 256 x 256, 64 x 64 x 3 latents,
274 M + 55 M parameters; random weights unless ``--checkpoint``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from diffinv.diffusion import sample_ddim  # noqa: E402
from diffinv.metrics import psnr  # noqa: E402
from diffinv.networks import UNetModel, VQFirstStage  # noqa: E402
from diffinv.operators import GaussianNoise  # noqa: E402
from diffinv.operators.resize import BicubicSuperResolution  # noqa: E402
from diffinv.priors.latent import LatentPrior  # noqa: E402
from diffinv.samplers.latent_dps import LatentDPS  # noqa: E402
from diffinv.samplers.resample import ReSample  # noqa: E402

ARCHS = {
    "tiny": dict(unet=dict(image_size=8, in_channels=3, out_channels=3, model_channels=32, attention_resolutions=[],
                           num_res_blocks=1, channel_mult=[1, 2], num_head_channels=32),
                 vq=dict(embed_dim=3, n_embed=64, ddconfig=dict(double_z=False, z_channels=3, resolution=16, in_channels=3,
                                                                out_ch=3, ch=32, ch_mult=[1, 2], num_res_blocks=1,
                                                                attn_resolutions=[], dropout=0.0))),
    "small": dict(unet=dict(image_size=16, in_channels=3, out_channels=3, model_channels=32, attention_resolutions=[4, 2],
                            num_res_blocks=2, channel_mult=[1, 1, 2], num_head_channels=32),
                  vq=dict(embed_dim=3, n_embed=256, ddconfig=dict(double_z=False, z_channels=3, resolution=64, in_channels=3,
                                                                  out_ch=3, ch=32, ch_mult=[1, 1, 2], num_res_blocks=2,
                                                                  attn_resolutions=[], dropout=0.0))),
    "ffhq": dict(unet=dict(image_size=64, in_channels=3, out_channels=3, model_channels=224, attention_resolutions=[8, 4, 2],
                           num_res_blocks=2, channel_mult=[1, 2, 3, 4], num_heads=-1, num_head_channels=32),
                 vq=dict(embed_dim=3, n_embed=8192, ddconfig=dict(double_z=False, z_channels=3, resolution=256, in_channels=3,
                                                                  out_ch=3, ch=128, ch_mult=[1, 2, 4], num_res_blocks=2,
                                                                  attn_resolutions=[], dropout=0.0))),
}


def build_prior(arch: str, checkpoint: str | None, quantize: bool, device: str, seed: int) -> LatentPrior:
    torch.manual_seed(seed)
    cfg = ARCHS[arch]
    prior = LatentPrior(UNetModel(**cfg["unet"]), VQFirstStage(**cfg["vq"]), checkpoint=checkpoint,
                        quantize_decode=quantize)
    return prior.to(device).eval().requires_grad_(False)


def load_truth(prior: LatentPrior, image: str | None, device: str, seed: int) -> torch.Tensor:
    if image:
        from diffinv.datasets.image_files import load_image

        return load_image(image, prior.pixel_shape[1], prior.pixel_shape[0])[None].to(device)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        return prior.decode(torch.randn(1, *prior.event_shape, generator=g).to(device)).clamp(-1, 1)


def row(name: str, sampler, seconds: float, x: torch.Tensor, op, y, truth) -> dict:
    t = dict(getattr(sampler, "timings", {}) or {})
    res = ((op(x) - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)).mean().item()
    out = {"method": name, "wall_s": seconds, "unet_s": t.get("unet", 0.0), "decoder_s": t.get("decoder", 0.0),
           "optimisation_s": t.get("optimisation", 0.0)}
    out["other_s"] = max(seconds - out["unet_s"] - out["decoder_s"] - out["optimisation_s"], 0.0)
    cost = getattr(sampler, "cost", None)
    out.update(nfe=getattr(cost, "nfe", None), forward_calls=getattr(cost, "forward_calls", None),
               grad_calls=getattr(cost, "grad_calls", None), residual=res,
               psnr=psnr(x.clamp(-1, 1), truth).mean().item())
    return out


def table(rows: list[dict]) -> str:
    head = ("| method | wall s | UNet s | decoder s | optimisation s | other s | NFE | fwd | grad | residual | PSNR dB |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['method']} | {r['wall_s']:.1f} | {r['unet_s']:.1f} | {r['decoder_s']:.1f} | "
                     f"{r['optimisation_s']:.1f} | {r['other_s']:.1f} | {r['nfe']} | {r['forward_calls']} | "
                     f"{r['grad_calls']} | {r['residual']:.4f} | {r['psnr']:.2f} |")
    return "\n".join(lines)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    p.add_argument("--checkpoint", default=None, help="LDM model.ckpt (or a LatentPriorTraining checkpoint)")
    p.add_argument("--image", default=None, help="ground-truth image (default: decode of a random latent)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sigma", type=float, default=0.01, help="measurement noise on [-1, 1] (ReSample: 0.01)")
    p.add_argument("--no-quantize", action="store_true", help="decode without the VQ codebook (random weights)")
    # ReSample (defaults: the paper / reference code)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--consistency-every", type=int, default=10)
    p.add_argument("--time-travel", type=int, default=5)
    p.add_argument("--pixel-iters", type=int, default=2000)
    p.add_argument("--latent-iters", type=int, default=500)
    p.add_argument("--latent-lr", type=float, default=5e-3)
    p.add_argument("--gamma", type=float, default=40.0)
    # Latent-DPS
    p.add_argument("--dps-steps", type=int, default=1000)
    p.add_argument("--zeta", type=float, default=1.0)
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    prior = build_prior(args.arch, args.checkpoint, not args.no_quantize, args.device, args.seed)
    truth = load_truth(prior, args.image, args.device, args.seed)
    op = BicubicSuperResolution(prior.pixel_shape, 4, noise=GaussianNoise(args.sigma)).to(args.device)
    y = op.measure(truth, torch.Generator(device=args.device).manual_seed(args.seed + 2))
    gen = lambda: torch.Generator(device=args.device).manual_seed(args.seed + 3)    # noqa: E731

    rows = []
    _sync(args.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        z = sample_ddim(prior, (1, *prior.event_shape), prior.schedule, num_steps=args.steps, generator=gen(),
                        device=args.device)
        x = prior.decode(z)
    _sync(args.device)

    class _Uncond:        # the unconditional DDIM baseline has no sampler object
        timings, cost = {}, type("C", (), {"nfe": args.steps, "forward_calls": 0, "grad_calls": 0})()
    rows.append(row(f"DDIM {args.steps} (unconditional)", _Uncond, time.perf_counter() - t0, x, op, y, truth))

    resample = ReSample(num_steps=args.steps, consistency_every=args.consistency_every,
                        time_travel_steps=args.time_travel, pixel_max_iters=args.pixel_iters,
                        latent_max_iters=args.latent_iters, latent_lr=args.latent_lr, gamma=args.gamma, profile=True)
    dps = LatentDPS(num_steps=args.dps_steps, zeta=args.zeta, profile=True)
    for name, sampler in ((f"ReSample {args.steps}", resample), (f"Latent-DPS {args.dps_steps}", dps)):
        _sync(args.device)
        t0 = time.perf_counter()
        x = sampler.sample(y, op, prior, generator=gen())
        _sync(args.device)
        rows.append(row(name, sampler, time.perf_counter() - t0, x, op, y, truth))
        print(f"done: {name}", file=sys.stderr, flush=True)

    iters = [(e["space"], e["iterations"][0]) for e in resample.consistency_log]
    info = {"arch": args.arch, "device": args.device, "threads": torch.get_num_threads(),
            "checkpoint": args.checkpoint, "image": args.image, "pixel_shape": list(prior.pixel_shape),
            "resample_consistency_iterations": iters}
    print(json.dumps(info))
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"setup": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
