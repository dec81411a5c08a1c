"""Shared by the flow tests: random weights (fresh nets start near identity) and a N(0, I) density."""

import math

import torch


def randomise(module: torch.nn.Module, scale: float = 0.3) -> None:
    # Fresh nets start near identity; random weights make the test meaningful.
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, scale)


def std_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    flat = z.reshape(z.shape[0], -1)
    return -0.5 * (flat**2).sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)
