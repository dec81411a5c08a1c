"""The neural networks of the model: frame encoder/decoder, static encoder, LSTM dynamic prior."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


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


STATIC_ENCODERS = ("mlp", "linear")


class StaticEncoder(nn.Module):
    """q(f_t | x_t) per frame. (..., D) → mean, logvar: (..., D_f).

    "mlp" (the paper): trunk Linear-LayerNorm-GELU-Linear-LayerNorm, then SiLU-Linear heads for the
    mean and the log-variance. "linear": mean = W·x_t + b and logvar = W'·x_t + b' — a code that is
    constant over a sequence can then only hold what is linearly invariant to the frame-to-frame
    changes of the features (see the README's Sprites section for why and what it measures)."""

    def __init__(self, in_dim: int = 128, hidden: int = 128, out_dim: int = 128, kind: str = "mlp"):
        super().__init__()
        if kind not in STATIC_ENCODERS:
            raise ValueError(f"model.static_encoder must be one of {', '.join(STATIC_ENCODERS)}, got {kind!r}")
        if kind == "linear":
            self.trunk = nn.Identity()
            self.mean, self.logvar = nn.Linear(in_dim, out_dim), nn.Linear(in_dim, out_dim)
            return
        self.trunk = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.LayerNorm(hidden)
        )
        self.mean = nn.Sequential(nn.SiLU(), nn.Linear(hidden, out_dim))
        self.logvar = nn.Sequential(nn.SiLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.mean(h), self.logvar(h)


def product_of_gaussians(mean: torch.Tensor, logvar: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Aggregate frame posteriors N(μ_t, σ_t²) over time by precision weighting.

    mean, logvar: (B, T, D) → (B, D) mean and variance of ∏_t N(μ_t, σ_t²) (normalised), with the
    returned variance floored at `floor`. The mean uses the exact (unfloored) variance: with tiny
    per-frame variances a floored one would scale the mean up (T=8, μ_t=1, logvar=−12 → 1.30).
    """
    precision = torch.exp(-logvar.float())  # float32: a sum of 16 precisions overflows fp16 easily
    total = precision.sum(dim=1)
    mean = (precision * mean.float()).sum(dim=1) / total
    return mean, (1.0 / total).clamp_min(floor)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag var), summed over the last dimension."""
    return -0.5 * ((x - mean) ** 2 / var + var.log() + math.log(2 * math.pi)).sum(dim=-1)


class LSTMPrior(nn.Module):
    """Autoregressive affine prior over λ: λ_t = m_t + exp(ℓ_t)·ε_t, ε_t ~ N(0, I), where (m_t, ℓ_t) come
    from a stacked LSTM fed λ_{t−1} (zeros at t = 0). Not conditioned on f (as in the official code):
    the dependence of dynamics on statics is carried by h."""

    def __init__(self, features: int = 128, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.features = features
        self.lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
        self.heads = nn.Linear(hidden, 2 * features)

    def _params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, log_scale = self.heads(h).chunk(2, dim=-1)
        return shift, log_scale

    def log_prob(self, lam: torch.Tensor) -> torch.Tensor:
        """λ: (B, T, D) → log p(λ): (B,), float32 (teacher forcing, vectorised over frames)."""
        lam = lam.float()
        with torch.autocast(device_type=lam.device.type, enabled=False):
            h, _ = self.lstm(F.pad(lam[:, :-1], (0, 0, 1, 0)))
            shift, log_scale = self._params(h)
            eps = (lam - shift) * torch.exp(-log_scale)
            log_n = -0.5 * (eps**2 + math.log(2 * math.pi))
            return (log_n - log_scale).sum(dim=(1, 2))

    @torch.no_grad()
    def sample(self, n: int, n_frames: int, device: torch.device | str, mean: bool = False) -> torch.Tensor:
        """n trajectories λ: (n, T, D); `mean=True` follows the per-step prior means (peers' protocol)."""
        prev = torch.zeros(n, 1, self.features, device=device)
        state, out = None, []
        for _ in range(n_frames):
            h, state = self.lstm(prev, state)
            shift, log_scale = self._params(h)
            prev = shift if mean else shift + torch.exp(log_scale) * torch.randn_like(shift)
            out.append(prev)
        return torch.cat(out, dim=1)
