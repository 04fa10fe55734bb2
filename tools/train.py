"""Train VMAs from one config (thin wrapper over :func:`vmas.solvers.cli.main`; the solver is
``vmas.solvers.solver.Solver``).

Smoke run on this machine (CPU, synthetic batches, < 3 min; writes runs/debug/model.pt):

    bash train.sh configs/debug.yaml

One process without the launcher (plain PyTorch engine, no DeepSpeed):

    .venv/bin/python tools/train.py configs/debug.yaml --synthetic train.engine=torch train.out_dir=/tmp/dbg

Paper run, 4 nodes x 8 GPUs (see docs/training.md for SLURM and hostfile variants):

    HOSTFILE=hostfile bash train.sh configs/paper.yaml
    bash train.sh configs/paper.yaml --resume             # continue from the newest checkpoint
    bash train.sh configs/paper.yaml --resume optim.max_steps=300000   # a finished run, trained on to a new end
    bash train.sh configs/paper.yaml --resume runs/paper/checkpoints/step_00200000   # a given checkpoint

Export the inference checkpoint of a training checkpoint (EMA weights + config + codec, one file; the checkpoint's
``meta.json`` holds its config, so no preset is needed):

    .venv/bin/python tools/train.py --export runs/paper/checkpoints/step_00200000 --out vmas.pt

Overrides are ``key.sub=value`` (YAML values), e.g. ``optim.max_steps=20 data.batch_size=1``.
"""
import sys

from vmas.solvers.cli import main

if __name__ == "__main__":
    sys.exit(main())
