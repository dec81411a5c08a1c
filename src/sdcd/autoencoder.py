"""The frame autoencoder: a DCGAN-style per-frame encoder to D-dim features and its mirror decoder.

SDCD trains it from the reconstruction only (its features are detached before the static encoder and
the flow), which is what makes the two-stage recipe (`model.stage`) the same objective.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


def lowpass_sse(recon: torch.Tensor, x: torch.Tensor, kernel: int) -> torch.Tensor:
    """The low-frequency part of the reconstruction error, per sequence, batch-averaged.

    recon, x: (B, T, C, H, W). The error is averaged over kernel × kernel blocks and each block counts
    kernel² times: an error that is the same over a block (a region drawn in a wrong shade) counts as
    much as in the pixel SSE, one that changes sign from pixel to pixel (an edge one pixel off) about
    kernel² times less. Added to the SSE with a weight, it raises the price of a wrong shade relative to
    a wrong detail. H and W must be multiples of kernel."""
    if x.shape[-1] % kernel or x.shape[-2] % kernel:
        raise ValueError(f"lowpass_kernel={kernel} must divide the frame size {tuple(x.shape[-2:])}")
    err = (recon.float() - x.float()).flatten(0, 1)  # (B·T, C, H, W)
    blocks = F.avg_pool2d(err, kernel) * kernel  # (B·T, C, H/k, W/k); squared, each block counts k² times
    return (blocks**2).reshape(x.shape[0], -1).sum(1).mean()
