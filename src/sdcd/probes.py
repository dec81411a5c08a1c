"""Leakage probes: how much of each factor a code holds, read off by a linear classifier.

For every factor and both codes — the static code f (posterior mean) and the time-mean of the
dynamic codes λ — a multinomial logistic regression is fit on the codes of the training split and
scored on the test split. A disentangled model has every static factor and no dynamic one in f
(the action's probe from f at chance), and the dynamic factors in λ. Keys of the result:
`probe/f/<factor>` and `probe/lam/<factor>` (test accuracy, in [0, 1]).

The posterior mean can hold a trace of a factor far below the posterior's own noise, which nothing
that generates from f (a sample of q(f|x)) can read. So f is also probed as the model passes it on:
`probe/f_sample/<factor>` fits and scores the same probe on one *sample* of q(f|x) per sequence (from
the features with their noise, `encode(mean=False)`). A factor read from the mean but not from a sample
is held by f below its noise; one read from both is held in what f transmits.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@torch.no_grad()
def encode_split(model, datamodule, split: str, batch_size: int = 256,
                 max_sequences: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(f: (N, D), time-mean λ: (N, D), sequence labels: (N, F), sampled f: (N, D)) of a split.

    f and λ from `model.encode(mean=True)`; the sampled f from `model.encode(mean=False)`."""
    device = next(model.parameters()).device
    n = datamodule.split_size(split)
    n = n if max_sequences is None else min(n, max_sequences)
    fs, lams, ys, f_samples = [], [], [], []
    for index in torch.arange(n).split(batch_size):
        batch = datamodule.batch(split, index, device=device)
        codes = model.encode(batch["x"], mean=True)
        fs.append(codes.f.float().cpu())
        lams.append(codes.lam.float().mean(1).cpu())
        ys.append(batch["labels"][:, 0].cpu())
        f_samples.append(model.encode(batch["x"], mean=False).f.float().cpu())
    return torch.cat(fs), torch.cat(lams), torch.cat(ys), torch.cat(f_samples)


def fit_linear_probe(x: Tensor, y: Tensor, n_classes: int, steps: int = 300, lr: float = 0.05,
                     weight_decay: float = 1e-4, seed: int = 0):
    """Full-batch multinomial logistic regression on standardised inputs; returns predict(x) -> labels."""
    # test/eval loops run under inference mode: fit in normal mode, on normal copies of the codes
    with torch.inference_mode(False), torch.enable_grad():
        x, y = x.clone(), y.clone()
        gen = torch.Generator().manual_seed(seed)
        mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
        net = nn.Linear(x.shape[1], n_classes)
        with torch.no_grad():
            net.weight.copy_(torch.randn(net.weight.shape, generator=gen) * 0.01)
            net.bias.zero_()
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        xs = (x - mu) / sd
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(xs), y).backward()
            opt.step()

    def predict(z: Tensor) -> Tensor:
        with torch.no_grad():
            return net((z - mu) / sd).argmax(-1)

    return predict


@torch.no_grad()
def linear_probes(model, datamodule, train_split: str = "train", test_split: str = "test",
                  max_train: int | None = None) -> dict[str, float]:
    """Test accuracy of a linear probe of every factor from f (its mean and a sample) and from the time-mean of λ."""
    was_training = model.training
    model.eval()
    try:
        f_tr, l_tr, y_tr, fs_tr = encode_split(model, datamodule, train_split, max_sequences=max_train)
        f_te, l_te, y_te, fs_te = encode_split(model, datamodule, test_split)
    finally:
        model.train(was_training)
    out = {}
    for i, factor in enumerate(datamodule.factors):
        for code, tr, te in (("f", f_tr, f_te), ("lam", l_tr, l_te), ("f_sample", fs_tr, fs_te)):
            predict = fit_linear_probe(tr, y_tr[:, i], factor.n_classes)
            out[f"probe/{code}/{factor.name}"] = float((predict(te) == y_te[:, i]).float().mean())
    return out
