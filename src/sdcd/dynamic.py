"""The dynamic side of SDCD: the conditional flow h (λ_1:T ↔ x_1:T given the static code: frame-wise
couplings plus the temporal layer) and the LSTM dynamic prior used to sample λ.

nflows convention: a `Transform.forward` maps *data → noise*. The data of h are the frame features x_t
and its noise the dynamic codes λ_t, so `forward` is inference x → λ (h⁻¹, vectorised over frames, used
in training) and `inverse` is generation λ → x (h; frame by frame because of the temporal layer).
"""

from __future__ import annotations

import math

import torch
from nflows.flows.base import Flow
from nflows.transforms.base import CompositeTransform, Transform
from torch import nn
from torch.nn import functional as F

from sdcd.flows import Conditioner, IIDStandardNormal, couplings, float32


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

    def params(self, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """λ: (B, T, D) → the per-step prior mean and log-scale (B, T, D) given λ_<t (teacher forcing,
        vectorised over frames), float32."""
        lam = lam.float()
        with torch.autocast(device_type=lam.device.type, enabled=False):
            h, _ = self.lstm(F.pad(lam[:, :-1], (0, 0, 1, 0)))
            return self._params(h)

    def log_prob(self, lam: torch.Tensor) -> torch.Tensor:
        """λ: (B, T, D) → log p(λ): (B,), float32."""
        lam = lam.float()
        shift, log_scale = self.params(lam)
        with torch.autocast(device_type=lam.device.type, enabled=False):
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
