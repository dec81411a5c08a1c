"""The frame autoencoder: a DCGAN-style per-frame encoder to D-dim features and its mirror decoder.

SDCD trains it from the reconstruction only (its features are detached before the static encoder and
the flow), which is what makes the two-stage recipe (`model.stage`) the same objective.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def n_down_blocks(frame_size: int) -> int:
    """Stride-2 blocks that take a frame from `frame_size` down to 4×4 (64 → 4 blocks, 32 → 3)."""
    n = int(math.log2(frame_size)) - 2
    if frame_size < 8 or 2 ** (n + 2) != frame_size:
        raise ValueError(f"frame_size must be a power of two ≥ 8 (e.g. 32 or 64), got {frame_size}")
    return n


def _block(conv: nn.Module, channels: int, groups: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.GroupNorm(min(groups, channels), channels), nn.SiLU())


class FrameEncoder(nn.Module):
    """Per frame, DCGAN style: k 4×4/stride-2 convs (GroupNorm+SiLU, widths c·2^i), then a 4×4 valid conv
    to `out_dim` (GroupNorm+SiLU). (N, C, H, W) → (N, out_dim). At 64×64, c=64: 64→128→256→512→128."""

    def __init__(self, frame_size: int = 64, channels: int = 3, base_channels: int = 64, out_dim: int = 128,
                 groups: int = 8):
        super().__init__()
        widths = [base_channels * 2**i for i in range(n_down_blocks(frame_size))]
        layers, c_in = [], channels
        for w in widths:
            layers.append(_block(nn.Conv2d(c_in, w, 4, 2, 1), w, groups))
            c_in = w
        layers.append(_block(nn.Conv2d(c_in, out_dim, 4, 1, 0), out_dim, groups))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class FrameDecoder(nn.Module):
    """Mirror of the encoder with a sigmoid output. (N, in_dim) → (N, C, H, W) in (0, 1)."""

    def __init__(self, frame_size: int = 64, channels: int = 3, base_channels: int = 64, in_dim: int = 128,
                 groups: int = 8):
        super().__init__()
        widths = [base_channels * 2**i for i in range(n_down_blocks(frame_size))][::-1]  # 512, 256, 128, 64
        layers = [_block(nn.ConvTranspose2d(in_dim, widths[0], 4, 1, 0), widths[0], groups)]  # 1 → 4
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers.append(_block(nn.ConvTranspose2d(w_in, w_out, 4, 2, 1), w_out, groups))
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])
