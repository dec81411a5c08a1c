"""How sharply the static code f tells each pair of classes apart, against the noise of its own posterior
(docs/sprites.md, "What the swap gets wrong").

For every pair of classes of every sequence-level factor, on the test split: the Fisher direction w of
the pair (fit on f's posterior means, pooled within-class covariance), the distance between the two
class means along w ("separation"), the spread of the means along w within a class, and the posterior
standard deviation of q(f | x) along w (median over the pair's sequences). "ratio" = separation /
posterior sd: how many of its own sampling sds apart f holds the two classes. A factor with a high
ratio that the swap still gets wrong is one f knows but the flow draws from λ instead.

    python bench/static_separation.py --checkpoint RUN/checkpoints/last.ckpt [--pairs 3] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch


def static_separation(mu: torch.Tensor, var: torch.Tensor, labels: torch.Tensor, ridge: float = 1e-4) -> list[dict]:
    """mu, var: (N, D) posterior means and variances of f; labels: (N,) class ids of one factor →
    one dict per pair of classes (a, b, separation, within_sd, posterior_sd, ratio), lowest ratio first."""
    mu, var = mu.double(), var.double()
    rows = []
    for a, b in itertools.combinations(sorted(set(labels.tolist())), 2):
        ma, mb = mu[labels == a], mu[labels == b]
        centred = torch.cat([ma - ma.mean(0), mb - mb.mean(0)])
        cov = centred.T @ centred / max(len(centred) - 2, 1) + ridge * torch.eye(mu.shape[1], dtype=mu.dtype)
        diff = ma.mean(0) - mb.mean(0)
        w = torch.linalg.solve(cov, diff)
        w = w / w.norm()
        separation = (w @ diff).abs().item()
        posterior_sd = (var[(labels == a) | (labels == b)] @ w**2).sqrt().median().item()
        rows.append({"a": a, "b": b, "separation": separation, "within_sd": (centred @ w).std().item(),
                     "posterior_sd": posterior_sd, "ratio": separation / posterior_sd})
    return sorted(rows, key=lambda r: r["ratio"])


@torch.no_grad()
def posteriors(model, batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """f's aggregated posterior means and variances (N, D) and the labels (N, F) of every sequence, with the
    features' unit noise as in training and in the protocol's tests."""
    mus, variances, labels = [], [], []
    for batch in batches:
        _, mu, var = model.static_posterior(model.frame_features(batch["x"]))
        mus.append(mu.float())
        variances.append(var.float())
        labels.append(batch["labels"][:, 0])
    return torch.cat(mus), torch.cat(variances), torch.cat(labels)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="an SDCD checkpoint (.ckpt)")
    ap.add_argument("--pairs", type=int, default=3, help="pairs per factor to print, lowest ratio first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print JSON (every pair) instead of a table")
    args = ap.parse_args(argv)

    from sprites_run import load_test_run

    dm, model, _ = load_test_run(args.checkpoint)
    torch.manual_seed(args.seed)
    rows = torch.arange(dm.split_size("test")).split(256)
    mu, var, labels = posteriors(model, (dm.batch("test", idx) for idx in rows))
    result = {f.name: static_separation(mu, var, labels[:, k]) for k, f in enumerate(dm.factors)}
    if args.json:
        print(json.dumps(result))
        return 0
    print("| factor | classes | separation | within-class sd | posterior sd | ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, rows in result.items():
        for r in rows[: args.pairs] + rows[-1:]:
            print(f"| {name} | {r['a']}–{r['b']} | {r['separation']:.3f} | {r['within_sd']:.3f} | "
                  f"{r['posterior_sd']:.3f} | {r['ratio']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
