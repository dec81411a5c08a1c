"""Where the static code's trace of the action comes from: the frame-wise static means μ_t of q(f_t | x_t)
against their aggregate, the mean of q(f | x) (README, "Where f's trace of the action comes from").

On the test split, with noise-free features: a linear probe of the action (fit on train, scored on test,
as the protocol's probes) from f's posterior mean (the precision-weighted product of the frames), from the
plain time-mean of μ_t, and from the first frame's μ_0; how far the frames' means spread within a sequence
(variance over t, per dimension, in units of the aggregated posterior variance; median / mean / max over
dimensions); how far the action classes' mean codes lie apart (variance over the classes of the per-class
mean of f, same units); and `sdcd.static.static_consistency`, the term `model.consistency_weight` charges.
With --swapped, also the static mean read from h(λ_B, f_A) (A's posterior mean f with the dynamics of B, the
previous sequence of the split), and a probe of B's factor from it, fit and scored on such swaps: what the
`cycle_reader=invariant` term trains the static encoder to ignore, on the pairs it is trained on.

With --dims, per dimension of f on the test split: its spread (standard deviation across sequences) in
posterior standard deviations, and the share of its variance the factor's classes explain (η², the
variance of the class means over the variance), beside the largest such share of any other factor; printed
as ranges over the dimensions (README, "What the reader is charged for decides what it drops").

    python bench/frame_codes.py --checkpoint RUN/checkpoints/last.ckpt [--factor action] [--dims] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


@torch.no_grad()
def frame_code_summary(mu_t: torch.Tensor, logvar_t: torch.Tensor, labels: torch.Tensor, n_classes: int,
                       floor: float = 1e-6) -> dict[str, torch.Tensor]:
    """mu_t, logvar_t: (N, T, D) frame posteriors; labels: (N,) → the codes the probes read and the spreads.

    Returns "f" (N, D) the aggregated mean, "time_mean" (N, D), "first" (N, D), and the floats "within"
    (per-dimension within-sequence variance of μ_t / aggregated variance, (D,)), "between" (per-dimension
    variance of the class means of f / mean aggregated variance, (D,)), "consistency" (the batch-mean term)."""
    from sdcd.static import product_of_gaussians, static_consistency

    mu_t, logvar_t = mu_t.float(), logvar_t.float()
    f, var = product_of_gaussians(mu_t, logvar_t, floor)
    present = [c for c in range(n_classes) if (labels == c).any()]
    class_means = torch.stack([f[labels == c].mean(0) for c in present])
    return {"f": f, "time_mean": mu_t.mean(1), "first": mu_t[:, 0],
            "within": (mu_t.var(1) / var).mean(0), "between": class_means.var(0) / var.mean(0),
            "consistency": static_consistency(mu_t, logvar_t, f)}


@torch.no_grad()
def dimension_shares(f: torch.Tensor, var: torch.Tensor, labels: torch.Tensor, factor: int) -> dict[str, torch.Tensor]:
    """f, var: (N, D) posterior means and variances; labels: (N, F) every factor's class → per dimension (D,):
    "spread" (std of f over N / mean posterior std), "share" (η² of `factor`: the variance of its class means,
    weighted by class size, over f's variance; in [0, 1]), "other" (the largest η² of the other factors)."""
    def eta2(y: torch.Tensor) -> torch.Tensor:
        between = sum((y == c).sum() * (f[y == c].mean(0) - f.mean(0)) ** 2 for c in y.unique()) / len(f)
        return between / f.var(0, unbiased=False).clamp_min(1e-12)

    others = [eta2(labels[:, i]) for i in range(labels.shape[1]) if i != factor]
    return {"spread": f.std(0) / var.sqrt().mean(0), "share": eta2(labels[:, factor]),
            "other": torch.stack(others).max(0).values if others else torch.zeros(f.shape[1])}


@torch.no_grad()
def frame_posteriors(model, dm, split: str, factor: int | None, max_sequences: int | None = None):
    """(μ_t, log σ_t², labels of `factor`) of a split: (N, T, D), (N, T, D), (N,) (every factor's: (N, F) with
    factor None), noise-free features."""
    n = dm.split_size(split) if max_sequences is None else min(max_sequences, dm.split_size(split))
    mus, logvars, ys = [], [], []
    for index in torch.arange(n).split(256):
        batch = dm.batch(split, index)
        mu_t, logvar_t = model.static_encoder(model.frame_features(batch["x"], noise=False))
        labels = batch["labels"][:, 0]
        ys.append(labels if factor is None else labels[:, factor])
        mus.append(mu_t.float()), logvars.append(logvar_t.float())
    return torch.cat(mus), torch.cat(logvars), torch.cat(ys)


@torch.no_grad()
def swapped_means(model, e: torch.Tensor) -> torch.Tensor:
    """e: (B, T, D) noise-free features → the static posterior mean (B, D) read from h(λ_B, f_A), row i
    with the dynamics of row i−1, f_A the posterior mean (with B = 1 the row itself: its own mean)."""
    from sdcd.cycle import swapped_features
    from sdcd.static import product_of_gaussians

    floor = model.hparams.variance_floor
    mu = product_of_gaussians(*model.static_encoder(e), floor)[0]
    e_ab, _ = swapped_features(model, e, mu.to(e.dtype))
    return product_of_gaussians(*model.static_encoder(e_ab), floor)[0]


@torch.no_grad()
def swapped_codes(model, dm, split: str, factor: int, max_sequences: int | None = None):
    """(static means read from the swaps (N, D), labels of `factor` of the partner B (N,)) of a split."""
    n = dm.split_size(split) if max_sequences is None else min(max_sequences, dm.split_size(split))
    means, ys = [], []
    for index in torch.arange(n).split(256):
        batch = dm.batch(split, index)
        means.append(swapped_means(model, model.frame_features(batch["x"], noise=False)).float())
        ys.append(batch["labels"][:, 0, factor].roll(1, 0))
    return torch.cat(means), torch.cat(ys)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="an SDCD checkpoint (.ckpt)")
    ap.add_argument("--factor", default="action", help="the factor to probe (default: action)")
    ap.add_argument("--max-train", type=int, default=10_000, help="train sequences the probes fit on")
    ap.add_argument("--swapped", action="store_true",
                    help="also probe the partner's factor from the static mean read from h(λ_B, f_A)")
    ap.add_argument("--dims", action="store_true",
                    help="also the per-dimension spread of f and the shares of its variance the factors explain")
    ap.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = ap.parse_args(argv)

    from sprites_run import load_test_run

    from sdcd.probes import fit_linear_probe

    dm, model, _ = load_test_run(args.checkpoint)
    names = [f.name for f in dm.factors]
    if args.factor not in names:
        print(f"frame_codes.py: --factor {args.factor!r}: expected one of {', '.join(names)}", file=sys.stderr)
        return 2
    i = names.index(args.factor)
    n_classes, floor = dm.factors[i].n_classes, model.hparams.variance_floor
    tr_mu, tr_logvar, tr_y = frame_posteriors(model, dm, "train", i, args.max_train)
    te_mu, te_logvar, te_labels = frame_posteriors(model, dm, "test", None)
    te_y = te_labels[:, i]
    train = frame_code_summary(tr_mu, tr_logvar, tr_y, n_classes, floor)
    test = frame_code_summary(te_mu, te_logvar, te_y, n_classes, floor)
    out = {}
    for code in ("f", "time_mean", "first"):
        predict = fit_linear_probe(train[code], tr_y, n_classes)
        out[f"probe/{code}/{args.factor}"] = float((predict(test[code]) == te_y).float().mean())
    for what in ("within", "between"):
        v = test[what]
        out.update({f"{what}/{stat}": float(getattr(v, stat)()) for stat in ("median", "mean", "max")})
    out["consistency"] = float(test["consistency"])
    if args.swapped:
        tr_f, tr_b = swapped_codes(model, dm, "train", i, args.max_train)
        te_f, te_b = swapped_codes(model, dm, "test", i)
        predict = fit_linear_probe(tr_f, tr_b, n_classes)
        out[f"probe/swapped/{args.factor}"] = float((predict(te_f) == te_b).float().mean())
    if args.dims:
        from sdcd.static import product_of_gaussians

        shares = dimension_shares(*product_of_gaussians(te_mu, te_logvar, floor), te_labels, i)
        for what, v in shares.items():
            out.update({f"dims/{what}/{stat}": float(getattr(v, stat)()) for stat in ("min", "median", "max")})
    if args.json:
        print(json.dumps(out))
        return 0
    for code, what in (("f", "f (the aggregated posterior mean)"), ("time_mean", "the time-mean of μ_t"),
                       ("first", "μ_0 (the first frame alone)")):
        print(f"probe {args.factor} from {what}: {100 * out[f'probe/{code}/{args.factor}']:.1f}%")
    for what, text in (("within", "within-sequence variance of μ_t"),
                       ("between", f"variance of f's {args.factor} class means")):
        print(f"{text} / aggregated variance: median {out[f'{what}/median']:.3g}, mean {out[f'{what}/mean']:.3g}, "
              f"max {out[f'{what}/max']:.3g} (over dimensions)")
    print(f"static consistency term: {out['consistency']:.1f}")
    if args.dims:
        for what, text in (("spread", "spread of f across sequences / posterior std"),
                           ("share", f"share of a dimension's variance explained by the {args.factor}"),
                           ("other", "largest share explained by any other factor")):
            print(f"{text}: min {out[f'dims/{what}/min']:.3g}, median {out[f'dims/{what}/median']:.3g}, "
                  f"max {out[f'dims/{what}/max']:.3g} (over dimensions)")
    if args.swapped:
        print(f"probe the partner's {args.factor} from the static mean of h(λ_B, f_A): "
              f"{100 * out[f'probe/swapped/{args.factor}']:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
