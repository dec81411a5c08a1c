"""An oracle model, judge and data whose answers are known exactly (evaluation tests)."""

import torch
from torch import nn

from sdcd.data_modules.base import Factor, IndexedDataModule
from sdcd.interface import Codes

FACTORS = (Factor("colour", 4, True), Factor("shape", 3, True), Factor("pos", 5, False, ordinal=True))


T = 3


class Coded(IndexedDataModule):
    """Videos whose pixels spell their labels: x[:, t, 0, 0, i] = label_i / 10."""

    factors = FACTORS

    def __init__(self, n=37, **kw):
        super().__init__(**kw)
        g = torch.Generator().manual_seed(0)
        statics = torch.stack([torch.randint(0, f.n_classes, (n,), generator=g) for f in FACTORS[:2]], 1)
        pos = torch.randint(0, 5, (n, T), generator=g)
        self.labels = torch.cat([statics[:, None].expand(n, T, 2), pos[..., None]], 2)  # (n, T, 3)
        self.n = n

    def _build(self, split):
        return self.n

    def materialize(self, split, index):
        labels = self.labels.to(index.device)[index]
        x = torch.zeros(len(index), T, 1, 4, 4, device=index.device)
        x[:, :, 0, 0, :3] = labels.float() / 10
        out = {"x": x, "labels": labels}
        if split == "test":  # paired twins: the same video (an oracle reproduces it exactly)
            out.update(x_same_static=x, x_same_dyn=x)
        return out


class OracleJudge(nn.Module):
    """Reads the labels back from the pixels as confident logits."""

    factors = FACTORS
    sequence_level = (True, True, False)

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def check_input(self, x):
        assert x.ndim == 5

    def forward(self, x):
        code = (x[:, :, 0, 0, :3] * 10).round().long()  # (B, T, 3)
        return [nn.functional.one_hot(code[:, 0, 0], 4).float() * 50,
                nn.functional.one_hot(code[:, 0, 1], 3).float() * 50,
                nn.functional.one_hot(code[:, :, 2], 5).float() * 50]


class OracleModel(nn.Module):
    """f = the static labels, λ = the dynamic label track; decode writes them back (a perfect model)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def encode(self, x, mean=False):
        code = x[:, :, 0, 0, :3]
        return Codes(f=code[:, 0, :2], f_mean=code[:, 0, :2], lam=code[:, :, 2:], features=code)

    def decode(self, f, lam):
        x = torch.zeros(f.shape[0], lam.shape[1], 1, 4, 4)
        x[:, :, 0, 0, :2] = f[:, None]
        x[:, :, 0, 0, 2:3] = lam
        return x

    def sample_static(self, n):
        return torch.randint(0, 3, (n, 2)).float() / 10

    def sample_dynamics(self, n, n_frames=None, mean=False):
        return torch.randint(0, 5, (n, n_frames, 1)).float() / 10
