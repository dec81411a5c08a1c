"""Does the subspace of f that a recolouring moves hold the appearance and not the action?
(The premise of the "appearance" cycle reader, sdcd.cycle; docs/sprites.md.)

For the sequences of the train and test splits and their RGB-permuted copies (sdcd.augmentation), the
static posterior means μ(x) and μ(x') of noise-free features; their moves δ = μ(x') − μ(x), whitened by
the train split's mean posterior std, give a covariance whose leading eigenvectors, up to a fraction
`mass` of its trace, span the subspace. Linear probes (sdcd.probes, fit on train, scored on test) of
every factor read from f's projection on the subspace ("in") and from the rest of f ("out").

    python bench/appearance_subspace.py --checkpoint RUN/checkpoints/last.ckpt [--n-train 4000] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from sdcd.augmentation import permute_colours
from sdcd.cycle import leading_directions
from sdcd.probes import fit_linear_probe


def colour_subspace(delta: torch.Tensor, mass: float) -> torch.Tensor:
    """delta: (N, D) moves of f → (D, k) orthonormal leading directions holding `mass` of their trace
    (the subspace the "appearance" cycle reader compares, sdcd.cycle)."""
    u, keep = leading_directions(delta.T @ delta / len(delta), mass)
    return u[:, keep.bool()]


def split_probes(f_tr, delta_tr, y_tr, f_te, y_te, n_classes, masses=(0.9, 0.99, 0.999)) -> dict:
    """f_*: (N, D) codes (whitened), delta_tr: (N, D) their moves under recolouring, y_*: (N, F) labels.
    → {mass: {"dims": k, "in": [acc per factor], "out": [...]}}."""
    out = {}
    for mass in masses:
        u = colour_subspace(delta_tr, mass)
        res = {"dims": u.shape[1]}
        for part, tr, te in (("in", f_tr @ u, f_te @ u), ("out", f_tr - f_tr @ u @ u.T, f_te - f_te @ u @ u.T)):
            accs = []
            for i, n in enumerate(n_classes):
                predict = fit_linear_probe(tr, y_tr[:, i], n)
                accs.append(float((predict(te) == y_te[:, i]).float().mean()))
            res[part] = accs
        out[mass] = res
    return out


@torch.no_grad()
def static_means(model, dm, split: str, n: int):
    """(μ(x), μ(x'), posterior variance, sequence labels) of the first n sequences of a split."""
    mus, mus_aug, variances, labels = [], [], [], []
    gen = torch.Generator().manual_seed(0)
    for index in torch.arange(min(n, dm.split_size(split))).split(256):
        batch = dm.batch(split, index)
        _, mu, var = model.static_posterior(model.frame_features(batch["x"], noise=False))
        copy = permute_colours(batch["x"], gen)
        _, mu_aug, _ = model.static_posterior(model.frame_features(copy, noise=False))
        mus.append(mu.float()), mus_aug.append(mu_aug.float()), variances.append(var.float())
        labels.append(batch["labels"][:, 0])
    return torch.cat(mus), torch.cat(mus_aug), torch.cat(variances), torch.cat(labels)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a stage-2 SDCD checkpoint trained on Sprites")
    ap.add_argument("--n-train", type=int, default=4000, help="train sequences for the subspace and the probes")
    ap.add_argument("--mass", type=float, nargs="+", default=[0.9, 0.99, 0.999])
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    from sdcd.data_modules.sprites import SpritesDataModule
    from sdcd.model import SDCD

    torch.manual_seed(0)
    dm = SpritesDataModule(val="holdout", val_characters=50)
    dm.setup("fit"), dm.setup("test")
    model = SDCD.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    f_tr, fa_tr, var_tr, y_tr = static_means(model, dm, "train", args.n_train)
    f_te, _, _, y_te = static_means(model, dm, "test", dm.split_size("test"))
    s = var_tr.mean(0).sqrt()
    result = split_probes(f_tr / s, (fa_tr - f_tr) / s, y_tr, f_te / s, y_te,
                          [f.n_classes for f in dm.factors], args.mass)
    names = [f.name for f in dm.factors]
    for mass, r in result.items():
        ins, outs = (", ".join(f"{n} {100 * a:.1f}" for n, a in zip(names, r[part])) for part in ("in", "out"))
        print(f"mass {mass}: {r['dims']} directions; in: {ins} | out: {outs}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"factors": names, **{str(k): v for k, v in result.items()}}, fh, indent=1)
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
