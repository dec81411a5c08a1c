"""The fast diagnostic loop for Sprites: train only SDCD's disentanglement part on cached features of a
frozen frame autoencoder, then measure where each factor lives.

    python bench/frozen_features.py --ae runs/lpc_autoencoder_cpu/<id>/checkpoints/last.ckpt \
        --steps 3000 --set kl_weight=0.2 static_encoder=linear --out probe.json

The frame autoencoder of SDCD learns from the reconstruction only (its features are detached before
the static encoder and the flow), so the rest can be trained on its frozen features: the feature means
of every Sprites sequence are computed once, and each step adds the unit feature noise and runs
`SDCD.disentanglement_terms` — no conv at all, hence ~10× faster than a full step. This is the same
objective as `model.stage=disentangle`, which is what the experiment configs use.

Measured on the test split (2,664 sequences), all in feature space (no decoder, no judge):
  probe/<code>/<factor>   linear probe (multinomial logistic regression fit on the train codes):
                          f = the posterior mean of the static code; lam = the time-mean of λ.
  feat/<test>/<factor>    a "feature judge" (an MLP on the 8×D feature sequence, trained on the
                          real train features, its accuracy on real test features reported as
                          feat/real/*) applied to generated features:
                          swap: h(λ_B, f_A): static factors judged against A, the action against B;
                          sample_static: h(λ_A, f ~ p(f)): the action against A (statics should be chance).
The real judge on decoded frames is what the experiment configs report; this loop is for
diagnosis only.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn
from torch.nn import functional as F

from sdcd.augmentation import augment_colours, augmentation_term, swap_term
from sdcd.data_modules.sprites import SpritesDataModule
from sdcd.model import SDCD


def parse_value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


@torch.no_grad()
def feature_means(model: SDCD, dm: SpritesDataModule, split: str, batch: int = 256):
    """(N, T, D) noise-free feature means and (N, F) sequence labels of a split."""
    n = dm.split_size(split)
    feats, labels = [], []
    for i in range(0, n, batch):
        b = dm.batch(split, torch.arange(i, min(n, i + batch)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats.append(model.frame_features(b["x"], noise=False).float())
        labels.append(b["labels"][:, 0])
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def augmented_feature_means(model: SDCD, dm: SpritesDataModule, split: str, batch: int = 256, seed: int = 0,
                            kind: str = "rgbperm"):
    """(N, T, D) feature means of each sequence after a colour augmentation (one draw per sequence):
    "rgbperm" permutes its RGB channels (`sdcd.augmentation.permute_colours`: a random non-identity
    permutation; brightness is kept), "gain" scales them by random gains (`sdcd.augmentation.random_gains`)."""
    g = torch.Generator().manual_seed(seed)
    n = dm.split_size(split)
    feats = []
    for i in range(0, n, batch):
        x = dm.batch(split, torch.arange(i, min(n, i + batch)))["x"]
        x = augment_colours(x, "permute" if kind == "rgbperm" else kind, g)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats.append(model.frame_features(x, noise=False).float())
    return torch.cat(feats)


def fit_probe(x_train, y_train, n_classes, steps=300, lr=1e-2, wd=1e-4):
    """Multinomial logistic regression, full batch, Adam (the loop's own settings; `sdcd.probes` is
    the evaluation's)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    net = nn.Linear(x_train.shape[1], n_classes)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=wd)
    xs = (x_train - mu) / sd
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(xs), y_train).backward()
            opt.step()
    return lambda x: net((x - mu) / sd).argmax(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ae", required=True, help="checkpoint whose frame autoencoder is used (frozen)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], help="SDCD hyperparameters, key=value")
    ap.add_argument("--shuffle", type=int, default=1, help="1 = the shuffle constraint on every step, 0 = never")
    ap.add_argument("--eval-every", type=int, default=0, help="also measure every N steps (0 = only at the end)")
    ap.add_argument("--aug-weight", type=float, default=0.0,
                    help="weight of the motion-augmentation term: ‖λ(x) − λ(x with its RGB channels permuted)‖²")
    ap.add_argument("--kl-from", type=float, default=None,
                    help="anneal the KL weight from this value down to kl_weight (log-linear over --kl-steps)")
    ap.add_argument("--kl-steps", type=int, default=1000)
    ap.add_argument("--shared-noise", type=int, default=1, help="the augmented copy gets the same feature noise")
    ap.add_argument("--fp32", action="store_true", help="train in float32 instead of bf16 autocast")
    ap.add_argument("--aug-loss", choices=["mse", "infonce", "swap"], default="mse",
                    help="mse/infonce: compare λ(x) and λ(x'); swap: regenerate x' from λ(x) and f(x') (and x from "
                         "λ(x') and f(x)) and charge the squared error in feature space, which a flow cannot "
                         "dodge by shrinking λ's colour directions")
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--aug-kind", choices=["rgbperm", "gain"], default="rgbperm",
                    help="the colour augmentation: permuted RGB channels, or random per-channel gains")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    ckpt = torch.load(args.ae, map_location="cpu", weights_only=False)
    hp = {k: v for k, v in ckpt["hyper_parameters"].items() if k in SDCD.__init__.__code__.co_varnames}
    hp.update(stage="joint", autoencoder_checkpoint=None)
    hp.update({k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)})
    model = SDCD(**hp)
    model.load_autoencoder(args.ae)
    model.eval()

    dm = SpritesDataModule(val="test")
    dm.setup("fit")
    t0 = time.time()
    cache = f"{args.ae}.features.pt"  # the features of this checkpoint, computed once
    try:
        e_train, y_train, e_test, y_test = torch.load(cache)
    except FileNotFoundError:
        e_train, y_train = feature_means(model, dm, "train")
        e_test, y_test = feature_means(model, dm, "test")
        torch.save((e_train, y_train, e_test, y_test), cache)
    e_aug = None
    if args.aug_weight:
        aug_cache = f"{args.ae}.features-{args.aug_kind}.pt"
        try:
            e_aug = torch.load(aug_cache)
        except FileNotFoundError:
            e_aug = augmented_feature_means(model, dm, "train", kind=args.aug_kind)
            torch.save(e_aug, aug_cache)
    names = [f.name for f in dm.factors]
    static = [i for i, f in enumerate(dm.factors) if f.static]
    n_classes = [f.n_classes for f in dm.factors]
    print(f"features: train {tuple(e_train.shape)} test {tuple(e_test.shape)} in {time.time() - t0:.0f}s", flush=True)

    # the feature judge: logistic regression on flattened real feature sequences (with the training noise)
    judges = []
    for i in range(len(names)):
        noisy = e_train + hp.get("feature_noise", 1.0) * torch.randn_like(e_train)
        judges.append(fit_probe(noisy.flatten(1), y_train[:, i], n_classes[i], steps=300))
    print(f"feature judge fit in {time.time() - t0:.0f}s", flush=True)

    def judge(feats, target, which):
        return {names[i]: (judges[i](feats.flatten(1)) == target[:, i]).float().mean().item() for i in which}

    parts = [model.static_encoder, model.static_prior, model.flow, model.dynamic_prior]
    opt = torch.optim.Adam([p for m in parts for p in m.parameters()], lr=hp.get("lr", 1e-3), fused=True)
    noise = hp.get("feature_noise", 1.0)

    def measure(step: int) -> dict:
        model.eval()
        out = {"step": step}
        with torch.no_grad():
            noisy_test = e_test + noise * torch.randn_like(e_test)
            out.update({f"feat/real/{k}": v for k, v in judge(noisy_test, y_test, range(len(names))).items()})

            f_tr, _, l_tr, _ = model.codes_of_features(e_train, mean=True)
            f_te, _, l_te, _ = model.codes_of_features(e_test, mean=True)
            for code, tr, te in (("f", f_tr, f_te), ("lam", l_tr.mean(1), l_te.mean(1))):
                for i, name in enumerate(names):
                    pred = fit_probe(tr, y_train[:, i], n_classes[i])(te)
                    out[f"probe/{code}/{name}"] = (pred == y_test[:, i]).float().mean().item()
            # swap: statics of A, dynamics of B = a derangement of the test set
            _, mu, var = model.static_posterior(noisy_test)
            f_a = mu + var.sqrt() * torch.randn_like(mu)
            lam, _ = model.flow.inverse_and_log_prob(noisy_test, f_a[:, None].expand(-1, e_test.shape[1], -1))
            perm = torch.roll(torch.arange(len(e_test)), 1)
            gen = model.flow.generate(lam[perm], f_a[:, None].expand(-1, e_test.shape[1], -1))
            target = y_test.clone()
            target[:, [i for i in range(len(names)) if i not in static]] = y_test[perm][
                :, [i for i in range(len(names)) if i not in static]]
            out.update({f"feat/swap/{k}": v for k, v in judge(gen, target, range(len(names))).items()})
            f_p = model.static_prior.sample_like(len(e_test), e_test)
            gen = model.flow.generate(lam, f_p[:, None].expand(-1, e_test.shape[1], -1))
            out.update({f"feat/sample_static/{k}": v for k, v in judge(gen, y_test, range(len(names))).items()})
        model.train()
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}), flush=True)
        return out

    history = []
    model.train()
    t0 = time.time()
    torch.set_grad_enabled(True)
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(e_train), (args.batch,))
        if args.kl_from is not None:
            frac = min(1.0, step / args.kl_steps)
            model.hparams.kl_weight = float(args.kl_from * (hp["kl_weight"] / args.kl_from) ** frac)
        e = e_train[idx] + noise * torch.randn(args.batch, *e_train.shape[1:])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.fp32):
            terms = model.disentanglement_terms(e, shuffle=bool(args.shuffle))
            if e_aug is not None:  # λ must not change when only the colours do
                ea = e_aug[idx] + (e - e_train[idx] if args.shared_noise else noise * torch.randn_like(e))
                if args.aug_loss == "swap":  # the colours must come from f: x' = h(λ(x), f(x')), x = h(λ(x'), f(x))
                    terms["aug"] = swap_term(model, e, ea)
                else:  # mse, or InfoNCE: find each sequence's colour-changed copy among the batch's, by λ alone
                    terms["aug"] = augmentation_term(model.codes_of_features(e).lam, model.codes_of_features(ea).lam,
                                                     args.aug_loss, args.temperature)
                terms["loss"] = terms["loss"] + args.aug_weight * terms["aug"]
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for m in parts for p in m.parameters()], hp.get("grad_clip_norm", 0.5))
        opt.step()
        if step % 500 == 0:
            print(f"step {step} {time.time() - t0:.0f}s " + " ".join(f"{k}={v.item():.2f}" for k, v in terms.items()),
                  flush=True)
        if args.eval_every and step % args.eval_every == 0 and step != args.steps:
            history.append(measure(step))
    history.append(measure(args.steps))
    result = {"args": vars(args), "hparams": hp, "seconds": time.time() - t0, "history": history}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
