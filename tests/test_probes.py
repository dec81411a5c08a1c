"""Linear leakage probes (src/sdcd/probes.py) on models whose codes hold known factors."""

import torch

from sdcd.data_modules.base import Factor, IndexedDataModule
from sdcd.model import Codes
from sdcd.probes import linear_probes

FACTORS = (Factor("colour", 4, True), Factor("action", 3, False))


class Labelled(IndexedDataModule):
    factors = FACTORS

    def __init__(self, n=400):
        super().__init__(batch_size=32)
        g = torch.Generator().manual_seed(0)
        self.labels = {s: torch.stack([torch.randint(0, f.n_classes, (n,), generator=g) for f in FACTORS], 1)
                       for s in ("train", "test")}
        self.n = n

    def _build(self, split):
        return self.n

    def materialize(self, split, index):
        y = self.labels[split][index]  # (B, 2), constant over T=3 frames
        return {"x": y[:, None].expand(-1, 3, -1).float(), "labels": y[:, None].expand(-1, 3, -1)}


class Leaky(torch.nn.Module):
    """f one-hot codes colour *and* the action; λ codes the action only."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def encode(self, x, mean=False):
        y = x[:, 0].long()
        f = torch.cat([torch.nn.functional.one_hot(y[:, 0], 4), torch.nn.functional.one_hot(y[:, 1], 3)], 1).float()
        lam = torch.nn.functional.one_hot(y[:, 1], 3).float()[:, None].expand(-1, 3, -1)
        return Codes(f=f, f_mean=f, lam=lam, features=x)


def test_probes_find_what_each_code_holds():
    res = linear_probes(Leaky(), Labelled())
    assert res["probe/f/colour"] == 1.0 and res["probe/f/action"] == 1.0  # the leak is found
    assert res["probe/lam/action"] == 1.0
    assert res["probe/lam/colour"] < 0.4  # λ knows nothing of the colour: chance is 0.25


class BelowNoise(Leaky):
    """f's mean holds the action 100 times below the posterior's noise; a sample of f does not."""

    def encode(self, x, mean=False):
        codes = super().encode(x, mean)
        f = torch.cat([codes.f[:, :4], 0.01 * codes.f[:, 4:]], 1)
        if not mean:
            f = f + torch.cat([torch.zeros_like(f[:, :4]), torch.randn_like(f[:, 4:])], 1)
        return Codes(f=f, f_mean=f, lam=codes.lam, features=x)


def test_sample_probe_separates_a_trace_below_the_noise():
    torch.manual_seed(0)
    res = linear_probes(BelowNoise(), Labelled())
    assert res["probe/f/action"] == 1.0  # the posterior mean holds it, however small
    assert res["probe/f_sample/action"] < 0.45  # a sample does not transmit it: chance is 1/3
    assert res["probe/f_sample/colour"] == 1.0  # what f holds above its noise is read from a sample too
    assert res["probe/f_sample/colour"] == res["probe/f/colour"]
