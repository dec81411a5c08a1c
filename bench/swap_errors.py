"""Where the swap test's errors come from: the partner's appearance leaking through λ, or the static
factor drawn wrong whoever the partner is (docs/sprites.md, "What the swap gets wrong").

For every test sequence A, decode(f_A, λ_B) with two partners B (the previous and the one-before-previous
row of a shuffled order) and judge it. Per sequence-level factor (on Sprites the action too, which a
swap should read as B's):

* acc: the judge reads A's class (the protocol's swap accuracy, one partner);
* acc_same_class / acc_other_class: the same, split by whether B has A's class — equal when nothing of
  B's value of the factor reaches the swapped sequence;
* read_as_partner: the fraction read as B's class when B's differs from A's (a leak through λ);
* recur: of the errors with the first partner, the fraction also wrong with the second (near the error
  rate when errors depend on the partner only; near 1 when they are a property of A);
* confusion: rows = A's class, columns = the class read (first partner).

    python bench/swap_errors.py --checkpoint RUN/checkpoints/last.ckpt --judge judges/sprites_cpu.pt [--n 1024] [--mean]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from sdcd.judge import judge_targets


@torch.no_grad()
def swap_errors(model, judge, batches, mean: bool = False) -> dict[str, dict]:
    """`batches`: an iterable of {"x": (B, T, C, H, W), "labels": (B, T, F)}; B ≥ 3 for two partners.
    `mean`: posterior means and noise-free features (the protocol's swap_mean) instead of samples."""
    seq_level = [i for i, s in enumerate(judge.sequence_level) if s]
    names = [judge.factors[i].name for i in seq_level]
    stats = {n: {"n": 0, "ok": 0, "same_n": 0, "same_ok": 0, "diff_n": 0, "as_partner": 0, "err": 0,
                 "err_recur": 0, "confusion": torch.zeros(judge.factors[i].n_classes, judge.factors[i].n_classes,
                                                         dtype=torch.long)} for n, i in zip(names, seq_level)}
    for batch in batches:
        codes = model.encode(batch["x"], mean=mean)
        targets = judge_targets(judge, batch["labels"])
        read = []
        for shift in (1, 2):  # two partners per sequence
            logits = judge(model.decode(codes.f, codes.lam.roll(shift, 0)).float().clamp(0, 1))
            read.append([logits[i].argmax(-1) for i in seq_level])
        for k, (n, i) in enumerate(zip(names, seq_level)):
            a, b = targets[i], targets[i].roll(1, 0)
            p1, p2 = read[0][k], read[1][k]
            s = stats[n]
            same = a == b
            s["n"] += len(a)
            s["ok"] += (p1 == a).sum().item()
            s["same_n"] += same.sum().item()
            s["same_ok"] += ((p1 == a) & same).sum().item()
            s["diff_n"] += (~same).sum().item()
            s["as_partner"] += ((p1 == b) & ~same).sum().item()
            s["err"] += (p1 != a).sum().item()
            s["err_recur"] += ((p1 != a) & (p2 != a)).sum().item()
            s["confusion"].index_put_((a, p1), torch.ones_like(a), accumulate=True)

    def frac(num, den):
        return num / den if den else float("nan")

    return {n: {"acc": frac(s["ok"], s["n"]), "acc_same_class": frac(s["same_ok"], s["same_n"]),
                "acc_other_class": frac(s["ok"] - s["same_ok"], s["n"] - s["same_n"]),
                "read_as_partner": frac(s["as_partner"], s["diff_n"]), "errors": s["err"],
                "recur": frac(s["err_recur"], s["err"]), "confusion": s["confusion"].tolist()}
            for n, s in stats.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="an SDCD checkpoint (.ckpt)")
    ap.add_argument("--judge", required=True, help="a Sprites judge file (make judge DATA=sprites_cpu)")
    ap.add_argument("--n", type=int, default=0, help="test sequences (a random subset; 0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mean", action="store_true", help="posterior-mean codes (the protocol's swap_mean)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)

    from sprites_run import load_test_run

    dm, model, judge = load_test_run(args.checkpoint, args.judge)
    torch.manual_seed(args.seed)
    order = torch.randperm(dm.split_size("test"))
    order = order[: args.n] if args.n else order
    result = swap_errors(model, judge, (dm.batch("test", idx) for idx in order.split(128)), mean=args.mean)
    if args.json:
        print(json.dumps(result))
        return 0
    print("| factor | swap acc | B has A's class | B has another | read as B's class | errors | recur, 2nd partner |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, r in result.items():
        print(f"| {n} | {r['acc']:.1%} | {r['acc_same_class']:.1%} | {r['acc_other_class']:.1%} | "
              f"{r['read_as_partner']:.1%} | {r['errors']} | {r['recur']:.1%} |")
    for n, r in result.items():
        print(f"\n{n}: confusion (rows = A's class, columns = read)")
        for row in r["confusion"]:
            print("  " + " ".join(f"{v:4d}" for v in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
