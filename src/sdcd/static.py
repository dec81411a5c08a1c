"""The static side of SDCD: the per-frame static encoder q(f_t | x_t), their aggregation into
q(f | x_1:T) by a product of Gaussians, and the RealNVP static prior p(f)."""

from __future__ import annotations

import math

import torch
from nflows.flows.base import Flow
from nflows.transforms.base import CompositeTransform
from torch import nn

from sdcd.flows import IIDStandardNormal, couplings, float32

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


def static_consistency(mean_t: torch.Tensor, logvar_t: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """½ Σ_t Σ_d (μ_t − μ)² / σ_t², per sequence, batch-averaged: the frame means' spread around the
    aggregated mean μ, in each frame posterior's standard deviations (detached, so the term cannot be
    lowered by widening the posteriors). mean_t, logvar_t: (B, T, D); mean: (B, D). Zero when every
    frame of a sequence gives the same mean."""
    deviation = mean_t.float() - mean.float()[:, None]
    return 0.5 * (deviation**2 * torch.exp(-logvar_t.float().detach())).sum(dim=(1, 2)).mean()


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag var), summed over the last dimension."""
    return -0.5 * ((x - mean) ** 2 / var + var.log() + math.log(2 * math.pi)).sum(dim=-1)


class StaticPrior(Flow):
    """p(f): a RealNVP (tanh-bounded affine couplings, alternating masks) on a standard normal."""

    def __init__(self, features: int = 128, n_layers: int = 8, hidden: int = 256):
        super().__init__(CompositeTransform(couplings(features, 0, n_layers, hidden)), IIDStandardNormal(features))
        self.features = features

    @float32
    def log_prob(self, inputs: torch.Tensor, context=None) -> torch.Tensor:  # f: (B, D) → (B,)
        noise, logdet = self._transform(inputs)
        return self._distribution.log_prob(noise) + logdet

    @float32
    def sample_like(self, n: int, reference: torch.Tensor) -> torch.Tensor:
        """n samples f: (n, D) on the device of `reference`."""
        z = torch.randn(n, self.features, device=reference.device, dtype=reference.dtype)
        return self._transform.inverse(z)[0]
