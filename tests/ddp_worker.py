"""A rank of a 2-process CPU (gloo) training run, started by test_train.py with spawn."""

from __future__ import annotations

import os

import torch


def run_rank(rank: int, world_size: int, port: int, options: dict, out_dir: str) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
        }
    )
    torch.set_num_threads(1)
    from fagan.train import TrainOptions, train

    result = train(TrainOptions(**options))
    torch.save(
        {
            "generator": result.generator.state_dict(),
            "discriminator": result.discriminator.state_dict(),
            "ema": result.ema_generator.state_dict(),
            "step": result.step,
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
