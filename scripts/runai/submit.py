#!/usr/bin/env python3
"""Submit ``diffinv fit`` / ``diffinv predict`` to a Run:AI cluster.

    # one pod, one GPU
    python scripts/runai/submit.py fit ns64-fit -p myproject -i registry/diffinv:latest \\
        --data-pvc datasets --output-pvc results -- --config configs/fit/inversebench_ns.yaml
    # distributed: a master pod + 4 worker pods (5 nodes) x 8 GPUs, DDP through torchrun
    python scripts/runai/submit.py fit ns-big -p myproject -i registry/diffinv:latest --workers 4 --gpus 8 \\
        --data-pvc datasets --output-pvc results -- --config configs/fit/inversebench_ns.yaml
    # predict over a problem (several GPUs split the ids; each id is written once)
    python scripts/runai/submit.py predict ns-enkg -p myproject -i registry/diffinv:latest --gpus 4 \\
        --data-pvc datasets --output-pvc results -- --config configs/prior/ns64.yaml \\
        --config configs/problem/ns_sub4.yaml --config configs/sampler/enkg.yaml
    # one item on 2 nodes x 8 GPUs: every rank works on it (EnKG's 2048 particles split over 16 GPUs)
    python scripts/runai/submit.py predict ns-enkg-one -p myproject -i registry/diffinv:latest --workers 1 \\
        --gpus 8 --sample-parallel --data-pvc datasets --output-pvc results -- --config configs/prior/ns64.yaml \\
        --config configs/problem/ns_sub4.yaml --config configs/sampler/enkg.yaml --data.init_args.max_items 1

``--dry-run`` prints the exact command instead of running it (no ``runai`` needed).

``--sample-parallel`` (predict) adds ``--model.init_args.sample_parallel=true
--trainer.use_distributed_sampler=false``: every rank of the job works on each item in turn (its share of the
draws, or of an ensemble's particles) instead of on items of its own, so one observation uses every GPU; with
``--model.init_args.checkpoint_every K`` a pre-empted job resubmitted with the same ``--run-name`` resumes the item
from its last ensemble checkpoint.

What runs in every pod (``bash -c``), from the repository in the image (``--workdir``):

1. ``data`` -> the data volume (``--data-pvc`` mounted at ``--data-mount``), ``outputs`` -> a folder of the
   output volume named after the job (``$JOB_NAME``, set by Run:AI; ``--run-name`` overrides it), and
   optionally ``checkpoints/public`` -> ``--checkpoints``. The configs' relative paths (``data/...``,
   ``outputs/...``) therefore land on the volumes, TensorBoard logs and checkpoints included:
   ``tensorboard --logdir <output volume>/<job name>``.
2. One pod: ``diffinv <fit|predict> ... --trainer.devices G`` (Lightning starts the G processes).
   Distributed (``--workers N``): Run:AI's PyTorch workload creates a master pod plus N workers with the
   Kubeflow PyTorchJob variables (MASTER_ADDR, MASTER_PORT, WORLD_SIZE = pods, PET_NNODES, ...); every pod
   runs ``torchrun --nnodes=$PET_NNODES --nproc-per-node=G --rdzv-backend=c10d
   --rdzv-endpoint=$MASTER_ADDR:$MASTER_PORT -m lightning_modules.cli ...`` so that Lightning sees a
   TorchElastic environment, with ``--trainer.num_nodes`` / ``--trainer.devices`` / ``--trainer.strategy ddp``
   matching it (Lightning detects TorchElastic first; it never detects the Kubeflow environment by itself).

CLI forms (``--legacy-cli`` for clusters with the older CLI):

    runai training submit NAME -p P -i IMAGE -g G --existing-pvc claimname=C,path=M ... --command -- bash -c CMD
    runai training pytorch submit NAME ... --workers N ...          (v2; alias: runai pytorch submit)
    runai submit NAME ... / runai submit-dist pytorch NAME --workers N ...   (--legacy-cli)
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

REPO_IN_IMAGE = "/workspace/diffinv"


def _pod_script(args: argparse.Namespace, diffinv_args: list[str]) -> str:
    """The bash script every pod runs."""
    run_dir = shlex.quote(args.run_name) if args.run_name else '"${JOB_NAME:?Run:AI sets JOB_NAME}"'
    out_dir = f"{shlex.quote(args.output_mount)}/{run_dir}"
    lines = ["set -euo pipefail", f"cd {shlex.quote(args.workdir)}", f"mkdir -p {out_dir}",
             "rm -rf outputs", f"ln -sfn {out_dir} outputs"]
    if args.data_pvc:
        lines += ["rm -rf data", f"ln -sfn {shlex.quote(args.data_mount)} data"]
    if args.checkpoints:
        lines += ["mkdir -p checkpoints", "rm -rf checkpoints/public",
                  f"ln -sfn {shlex.quote(args.checkpoints)} checkpoints/public"]
    if args.sample_parallel:
        diffinv_args = [*diffinv_args, "--model.init_args.sample_parallel=true",
                        "--trainer.use_distributed_sampler=false"]
    user = " ".join(shlex.quote(a) for a in diffinv_args)
    gpus = args.gpus
    if args.workers > 0:
        nnodes = '"${PET_NNODES:-$WORLD_SIZE}"'
        launch = (f"torchrun --nnodes={nnodes} --nproc-per-node={gpus} --rdzv-backend=c10d "
                  f'--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="${{JOB_UUID:-{args.name}}}" '
                  f"-m lightning_modules.cli {args.command} {user} --trainer.num_nodes={nnodes} "
                  f"--trainer.devices={gpus} --trainer.strategy=ddp --trainer.accelerator=gpu")
    else:
        launch = f"diffinv {args.command} {user} --trainer.devices={gpus} --trainer.accelerator=gpu"
        if gpus > 1:
            launch += " --trainer.strategy=ddp"
    lines.append(f"exec {launch}")
    return "; ".join(lines)


def build_command(args: argparse.Namespace, diffinv_args: list[str]) -> list[str]:
    """The ``runai`` command line (a list of arguments) for these options."""
    if args.workers < 0 or args.gpus < 1:
        raise ValueError(f"need --workers >= 0 and --gpus >= 1, got {args.workers} and {args.gpus}")
    if args.sample_parallel and args.command != "predict":
        raise ValueError("--sample-parallel is a predict option (every rank works on each item)")
    if args.workers > 0:
        head = ["runai", "submit-dist", "pytorch", args.name] if args.legacy_cli else \
            ["runai", "training", "pytorch", "submit", args.name]
        head += ["--workers", str(args.workers)]
    else:
        head = ["runai", "submit", args.name] if args.legacy_cli else ["runai", "training", "submit", args.name]
    cmd = head + ["-p", args.project, "-i", args.image, "-g", str(args.gpus)]
    if args.data_pvc:
        cmd += ["--existing-pvc", f"claimname={args.data_pvc},path={args.data_mount}"]
    cmd += ["--existing-pvc", f"claimname={args.output_pvc},path={args.output_mount}"]
    if args.checkpoints_pvc:
        cmd += ["--existing-pvc", f"claimname={args.checkpoints_pvc},path={args.checkpoints_mount}"]
    if args.cpu:
        cmd += ["--cpu-core-request" if not args.legacy_cli else "--cpu", str(args.cpu)]
    if args.memory:
        cmd += ["--cpu-memory-request" if not args.legacy_cli else "--memory", args.memory]
    if args.large_shm:
        cmd.append("--large-shm")
    for kv in args.env:
        cmd += ["-e", kv]
    cmd += ["-e", "PYTHONUNBUFFERED=1"]
    cmd += args.runai_arg
    cmd += ["--command", "--", "bash", "-c", _pod_script(args, diffinv_args)]
    return cmd


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Arguments after `--` go to `diffinv fit|predict` (e.g. --config ...).")
    p.add_argument("command", choices=["fit", "predict"], help="the diffinv subcommand")
    p.add_argument("name", help="Run:AI job name (also the output folder, $JOB_NAME)")
    p.add_argument("-p", "--project", required=True, help="Run:AI project")
    p.add_argument("-i", "--image", required=True, help="container image built from the Dockerfile")
    p.add_argument("-g", "--gpus", type=int, default=1, help="GPUs per pod (default 1)")
    p.add_argument("--workers", type=int, default=0,
                   help="distributed PyTorch job with a master pod plus this many worker pods (0: one pod)")
    p.add_argument("--legacy-cli", action="store_true", help="use `runai submit` / `runai submit-dist pytorch`")
    p.add_argument("--data-pvc", help="PVC holding the data (mounted at --data-mount, linked as ./data)")
    p.add_argument("--data-mount", default="/mnt/data")
    p.add_argument("--output-pvc", required=True, help="PVC for outputs (logs, checkpoints, predictions)")
    p.add_argument("--output-mount", default="/mnt/outputs")
    p.add_argument("--run-name", help="output folder name on the output volume (default: $JOB_NAME); reuse a "
                                      "previous job's folder to resume its predictions")
    p.add_argument("--checkpoints", help="folder (inside a mounted volume) linked as ./checkpoints/public")
    p.add_argument("--checkpoints-pvc", help="an extra PVC to mount for --checkpoints")
    p.add_argument("--checkpoints-mount", default="/mnt/checkpoints")
    p.add_argument("--workdir", default=REPO_IN_IMAGE, help="the repository inside the image")
    p.add_argument("--cpu", type=float, help="CPU cores to request")
    p.add_argument("--memory", help="memory to request, e.g. 64G")
    p.add_argument("--large-shm", action="store_true", help="large /dev/shm (DataLoader workers)")
    p.add_argument("-e", "--env", action="append", default=[], help="KEY=VALUE environment variable (repeatable)")
    p.add_argument("--runai-arg", action="append", default=[], help="extra argument passed to runai (repeatable)")
    p.add_argument("--sample-parallel", action="store_true",
                   help="predict: every rank works on each item (its share of the draws or particles), one item "
                        "after another, instead of each rank on its own items")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        cut = argv.index("--")
        argv, diffinv_args = argv[:cut], argv[cut + 1:]
    else:
        diffinv_args = []
    args = parser().parse_args(argv)
    if not any(a == "--config" or a.startswith("--config=") for a in diffinv_args):
        parser().error("give the diffinv configs after `--`, e.g. -- --config configs/fit/tiny_cpu.yaml")
    if args.sample_parallel and args.command != "predict":
        parser().error("--sample-parallel is a predict option (every rank works on each item)")
    cmd = build_command(args, diffinv_args)
    if args.dry_run:
        pods = f"1 master + {args.workers} workers = {args.workers + 1} pods" if args.workers else "1 pod"
        ranks = (args.workers + 1) * args.gpus
        mode = f"; sample-parallel: all {ranks} ranks work on each item" if args.sample_parallel else ""
        print(f"# {pods} x {args.gpus} GPU(s){mode}")
        print(shlex.join(cmd))
        return 0
    return subprocess.call(cmd, env=os.environ.copy())


if __name__ == "__main__":
    sys.exit(main())
