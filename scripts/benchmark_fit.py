"""Throughput of ``diffinv fit`` (Lightning) against a minimal hand-written PyTorch loop.

Both train the same network from the same initial weights on the same synthetic DataLoader, with the
same batch, precision, AdamW + warm-up schedule, loss and EMA update (``torch.optim.swa_utils``
``AveragedModel`` + ``get_ema_avg_fn``, what Lightning's ``EMAWeightAveraging`` runs). The Lightning
side is a ``Trainer`` with ``PriorTraining`` set up as the configs do (TensorBoard logger, per-step
loss / lr logging flushed every ``log_every_n_steps``, ModelCheckpoint, EMAWeightAveraging, a TQDM
progress bar) but without sample grids or validation. Throughput is measured in steady state: from the
end of optimiser step ``warmup`` to the end of step ``warmup + steps`` (a CUDA synchronise at both ends),
and the two sides alternate ``repeats`` times so that machine load affects both alike.

    python scripts/benchmark_fit.py                                   # CPU: SongUNet 32x32, batch 32, fp32
    python scripts/benchmark_fit.py --device cuda --size dps          # DPS FFHQ UNet 256x256, bf16, compile off/on
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.synthetic import SyntheticImageDataModule  # noqa: E402
from diffinv.networks import EDMPrecond, UNetModel  # noqa: E402
from lightning_modules.prior_training import PriorTraining, images_from_batch  # noqa: E402

SIZES = {
    # name: (network builder, loss, channels, resolution, default batch)
    "tiny": (lambda: EDMPrecond(16, 1, model_type="SongUNet", model_channels=16, channel_mult=[1, 2], num_blocks=1,
                                attn_resolutions=[], dropout=0.0), "edm", 1, 16, 32),
    "small": (lambda: EDMPrecond(32, 3, model_type="SongUNet", model_channels=32, channel_mult=[1, 2, 2],
                                 num_blocks=1, attn_resolutions=[16], dropout=0.0), "edm", 3, 32, 32),
    # DPS FFHQ-256 (ffhq_10m.pt) configuration, as in configs/fit/dps_ffhq_finetune.yaml.
    "dps": (lambda: UNetModel(image_size=256, in_channels=3, model_channels=128, out_channels=6, num_res_blocks=1,
                              attention_resolutions=[16], dropout=0.0, channel_mult=[1, 1, 2, 2, 4, 4], num_heads=4,
                              num_head_channels=64, num_heads_upsample=4, use_scale_shift_norm=True,
                              resblock_updown=True), "vp_epsilon", 3, 256, 8),
}
LR, WARMUP_LR_STEPS, EMA_DECAY = 1e-4, 10, 0.999


def build(size: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return SIZES[size][0]()


def datamodule(args) -> SyntheticImageDataModule:
    _, _, channels, resolution, _ = SIZES[args.size]
    total = args.batch * (args.warmup + args.steps + 2)        # one epoch covers the run (no epoch boundary)
    dm = SyntheticImageDataModule(channels=channels, resolution=resolution, num_train=total, num_val=args.batch,
                                  batch_size=args.batch, seed=0, pin_memory=args.device == "cuda")
    dm.setup("fit")
    return dm


def clock(device: str) -> tuple[float, float]:
    """(wall time, this process's CPU time) after finishing the queued GPU work. On a shared CPU the CPU
    time is the fairer measure: it counts the work of every thread of the process (TensorBoard writer and
    data loading included) but not the time spent waiting for a core."""
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


def rate(args, t0: tuple[float, float], t1: tuple[float, float]) -> tuple[float, float]:
    """Images per second of wall time and of CPU time over the timed window."""
    return args.batch * args.steps / (t1[0] - t0[0]), args.batch * args.steps / (t1[1] - t0[1])


def run_lightning(args, dm, compile_: bool) -> tuple[float, float]:
    from lightning.pytorch import Callback, Trainer
    from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger

    class Timer(Callback):
        t0 = t1 = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == args.warmup:
                self.t0 = clock(args.device)
            elif trainer.global_step == args.warmup + args.steps:
                self.t1 = clock(args.device)

    timer = Timer()
    module = PriorTraining(build(args.size, args.seed), loss=SIZES[args.size][1], lr=LR, warmup_steps=WARMUP_LR_STEPS,
                           sample_every_n_steps=0, compile=compile_)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, precision=args.precision,
            max_steps=args.warmup + args.steps, limit_val_batches=0, num_sanity_val_steps=0,
            log_every_n_steps=args.log_every, enable_model_summary=False, default_root_dir=tmp,
            logger=TensorBoardLogger(tmp, name="tb", default_hp_metric=False),
            callbacks=[timer, EMAWeightAveraging(decay=EMA_DECAY),
                       ModelCheckpoint(dirpath=f"{tmp}/ckpt", save_last=True, every_n_train_steps=5000),
                       TQDMProgressBar(refresh_rate=args.refresh_rate)])
        trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return rate(args, timer.t0, timer.t1)


def run_plain(args, dm, compile_: bool) -> tuple[float, float]:
    from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

    from diffinv.losses import EDMLoss, VPEpsilonLoss

    device = torch.device(args.device)
    net = build(args.size, args.seed).to(device).train()
    loss_fn = EDMLoss() if SIZES[args.size][1] == "edm" else VPEpsilonLoss("linear")
    opt = torch.optim.AdamW(net.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP_LR_STEPS))
    ema = AveragedModel(net, avg_fn=get_ema_avg_fn(EMA_DECAY), use_buffers=True)
    fwd = torch.compile(net) if compile_ else net
    bf16 = args.precision.startswith("bf16")
    t0 = None
    batches = itertools.chain.from_iterable(itertools.repeat(dm.train_dataloader()))
    for step, batch in enumerate(batches, start=1):
        x0 = images_from_batch(batch).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(fwd, x0).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.update_parameters(net)
        if step == args.warmup:
            t0 = clock(args.device)
        elif step == args.warmup + args.steps:
            return rate(args, t0, clock(args.device))
    raise AssertionError("unreachable")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--size", choices=sorted(SIZES), default=None, help="network (default: small on cpu, dps on cuda)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--precision", default=None, help="Lightning precision (default: 32-true on cpu, bf16-mixed on cuda)")
    ap.add_argument("--compile", choices=["off", "on", "both"], default=None,
                    help="torch.compile the network (default: off on cpu, both on cuda)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5 on cpu, 20 on cuda)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on cpu, 100 on cuda)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--log-every", type=int, default=None,
                    help="Trainer log_every_n_steps (default as in the configs: 1 on cpu as tiny_cpu.yaml, 50 on cuda)")
    ap.add_argument("--refresh-rate", type=int, default=None,
                    help="progress-bar refresh rate (default as in the configs: 1 on cpu, 50 on cuda)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on cpu)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    args.size = args.size or ("dps" if gpu else "small")
    args.batch = args.batch or SIZES[args.size][4]
    args.precision = args.precision or ("bf16-mixed" if gpu else "32-true")
    args.compile = args.compile or ("both" if gpu else "off")
    args.warmup = args.warmup if args.warmup is not None else (20 if gpu else 5)
    args.steps = args.steps or (100 if gpu else 20)
    args.log_every = args.log_every or (50 if gpu else 1)
    args.refresh_rate = args.refresh_rate or (50 if gpu else 1)
    if args.threads or not gpu:
        torch.set_num_threads(args.threads or 1)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    dm = datamodule(args)
    rows = []
    for compile_ in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
        light, plain = [], []
        for r in range(args.repeats):          # alternate the order, so that load changes hit both sides alike
            first, second = (run_plain, run_lightning) if r % 2 == 0 else (run_lightning, run_plain)
            results = {f.__name__: f(args, dm, compile_) for f in (first, second)}
            plain.append(results["run_plain"])
            light.append(results["run_lightning"])
            print(f"[compile={compile_}] repeat {r}: images/s (wall, CPU time): plain {plain[-1][0]:.1f}, "
                  f"{plain[-1][1]:.1f}; lightning {light[-1][0]:.1f}, {light[-1][1]:.1f}", flush=True)
        row = {"size": args.size, "device": args.device, "batch": args.batch, "precision": args.precision,
               "compile": compile_, "lightning_runs": light, "plain_runs": plain}
        for i, clock_name in enumerate(("wall", "cpu")):
            lm, pm = statistics.median(r[i] for r in light), statistics.median(r[i] for r in plain)
            row[clock_name] = {"lightning_img_s": lm, "plain_img_s": pm, "overhead_pct": 100 * (pm - lm) / pm}
        rows.append(row)

    print(f"\nsteady-state training throughput ({args.steps} timed steps after {args.warmup}, median of "
          f"{args.repeats}; log_every_n_steps {args.log_every}, progress bar every {args.refresh_rate}; "
          f"{torch.get_num_threads()} CPU threads)")
    print(f"{'network':8} {'device':6} {'batch':>5} {'precision':10} {'compile':7} {'clock':5} {'Lightning':>12} "
          f"{'plain':>12} {'overhead':>9}")
    for r in rows:
        for clock_name in ("wall", "cpu"):
            c = r[clock_name]
            print(f"{r['size']:8} {r['device']:6} {r['batch']:>5} {r['precision']:10} {str(r['compile']):7} "
                  f"{clock_name:5} {c['lightning_img_s']:>8.1f} i/s {c['plain_img_s']:>8.1f} i/s "
                  f"{c['overhead_pct']:>8.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
