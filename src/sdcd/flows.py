"""Normalizing flows of the model, built on nflows.

nflows convention: a `Transform.forward` maps *data → noise* and returns (outputs, logabsdet (N,)).
Here the data of the conditional flow h are the frame features x_t and its noise are the dynamic codes
λ_t, so `forward` is the inference direction x → λ (h⁻¹, vectorised over frames, used in training)
and `inverse` is generation λ → x (h; frame by frame because of the temporal layer).

Log-dets and likelihoods are always computed in float32, even under bf16/fp16 autocast.
"""

from __future__ import annotations

import functools
import math

import torch
from nflows.distributions.base import Distribution
from nflows.flows.base import Flow
from nflows.transforms.base import CompositeTransform, Transform
from nflows.transforms.coupling import AffineCouplingTransform
from torch import nn


def float32(fn):
    """Run `fn` with autocast off and half-precision tensor arguments cast up to float32."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        def cast(a):
            return a.float() if torch.is_tensor(a) and a.dtype in (torch.float16, torch.bfloat16) else a

        args = tuple(cast(a) for a in args)
        kwargs = {k: cast(v) for k, v in kwargs.items()}
        device = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """The official conditioner shape: Linear-LeakyReLU-Linear-LeakyReLU-Linear."""
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden), nn.LeakyReLU(), nn.Linear(hidden, d_out)
    )


class Conditioner(nn.Module):
    """(identity features, context) → [shift, raw log-scale], as two separate MLPs (official layout)."""

    def __init__(self, in_features: int, out_features: int, context_features: int, hidden: int):
        super().__init__()
        n = out_features // 2
        self.shift = mlp(in_features + context_features, hidden, n)
        self.log_scale = mlp(in_features + context_features, hidden, n)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = x if context is None else torch.cat([x, context], dim=-1)
        return torch.cat([self.shift(h), self.log_scale(h)], dim=-1)


class TanhAffineCoupling(AffineCouplingTransform):
    """Affine coupling whose log-scale is bounded by tanh to (−1, 1), as in the official code.

    nflows' own coupling uses a sigmoid scale; we keep its masking/context plumbing and change only
    the scale parametrisation.
    """

    def _log_scale_and_shift(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.num_transform_features
        return torch.tanh(params[:, n:]), params[:, :n]

    def _coupling_transform_forward(self, inputs, transform_params):
        log_scale, shift = self._log_scale_and_shift(transform_params)
        return inputs * torch.exp(log_scale) + shift, log_scale.sum(dim=1)

    def _coupling_transform_inverse(self, inputs, transform_params):
        log_scale, shift = self._log_scale_and_shift(transform_params)
        return (inputs - shift) * torch.exp(-log_scale), -log_scale.sum(dim=1)


def couplings(features: int, context_features: int, n_layers: int, hidden: int) -> list[Transform]:
    """`n_layers` tanh-bounded affine couplings with alternating odd/even masks."""
    layers = []
    for i in range(n_layers):
        mask = (torch.arange(features) + i) % 2  # 1 = transformed, 0 = passed through and conditioned on

        def make_net(d_in, d_out):
            return Conditioner(d_in, d_out, context_features, hidden)

        layers.append(TanhAffineCoupling(mask, make_net))
    return layers


class FrameWise(Transform):
    """Applies a per-frame transform to sequences: inputs (B, T, D), context (B, T, C)."""

    def __init__(self, transform: Transform):
        super().__init__()
        self.transform = transform

    def _run(self, fn, inputs, context):
        b, t, d = inputs.shape
        ctx = None if context is None else context.reshape(b * t, -1)
        out, logdet = fn(inputs.reshape(b * t, d), ctx)
        return out.reshape(b, t, d), logdet.reshape(b, t).sum(dim=1)

    def forward(self, inputs, context=None):
        return self._run(self.transform.forward, inputs, context)

    def inverse(self, inputs, context=None):
        return self._run(self.transform.inverse, inputs, context)


class TemporalAffine(Transform):
    """The temporal layer of h: generation u_t = λ_t·exp(s(u_{t−1}, f_t)) + m(u_{t−1}, f_t), u_0 := 0.

    Every dimension is transformed, conditioned on the previous frame's *output of this layer* and on
    the (detached: the official code cuts static-code gradients here) static code. In the inference
    direction u → λ all u_t are known, so it is vectorised over frames; generation is sequential.
    """

    def __init__(self, features: int, context_features: int, hidden: int):
        super().__init__()
        self.net = Conditioner(features, 2 * features, context_features, hidden)

    def _params(self, prev: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(prev, context.detach())
        shift, raw = out.chunk(2, dim=-1)
        return torch.tanh(raw), shift

    def forward(self, inputs, context=None):  # u: (B, T, D) → λ
        prev = torch.cat([torch.zeros_like(inputs[:, :1]), inputs[:, :-1]], dim=1)
        log_scale, shift = self._params(prev, context)
        return (inputs - shift) * torch.exp(-log_scale), -log_scale.sum(dim=(1, 2))

    def inverse(self, inputs, context=None):  # λ: (B, T, D) → u, frame by frame
        prev = torch.zeros_like(inputs[:, 0])
        outs, logdet = [], inputs.new_zeros(inputs.shape[0])
        for t in range(inputs.shape[1]):
            log_scale, shift = self._params(prev, context[:, t])
            prev = inputs[:, t] * torch.exp(log_scale) + shift
            outs.append(prev)
            logdet = logdet + log_scale.sum(dim=1)
        return torch.stack(outs, dim=1), logdet


class IIDStandardNormal(Distribution):
    """N(0, I) over any trailing shape (..., D): i.i.d. over frames, so sequence length is free."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features

    def _log_prob(self, inputs, context):
        if inputs.shape[-1] != self.features:
            raise ValueError(f"expected last dimension {self.features}, got shape {tuple(inputs.shape)}")
        flat = inputs.reshape(inputs.shape[0], -1)
        return -0.5 * (flat**2).sum(dim=1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)

    def _sample(self, num_samples, context):
        raise NotImplementedError("sample λ with torch.randn of the wanted (B, T, D) shape")


class ConditionalFlow(Flow):
    """h: λ_{1:T} ↔ x_{1:T} given per-frame static codes f_{1:T} (aggregated f repeated, or shuffled f_t).

    Transform order (data → noise): 8 frame-wise couplings conditioned on f, then the temporal layer.
    """

    def __init__(self, features: int = 128, n_layers: int = 8, hidden: int = 256, temporal: bool = True):
        blocks: list[Transform] = [FrameWise(c) for c in couplings(features, features, n_layers, hidden)]
        if temporal:
            blocks.append(TemporalAffine(features, features, hidden))
        super().__init__(CompositeTransform(blocks), IIDStandardNormal(features))

    @float32
    def inverse_and_log_prob(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, D), context: (B, T, C) → λ: (B, T, D), log p(x | f): (B,)."""
        lam, logdet = self._transform(x, context=context)
        return lam, self._distribution.log_prob(lam) + logdet

    @float32
    def generate(self, lam: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """λ: (B, T, D), context: (B, T, C) → x: (B, T, D)."""
        return self._transform.inverse(lam, context=context)[0]


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
